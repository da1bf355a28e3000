"""The chaos suite: real rollouts under injected faults, judged against DESIGN.md's invariants.

Modules, by what they own (importing any of them starts nothing and changes no global state;
signal handlers and log levels are set only by :func:`run.main`):

* ``scenario``       the rollout under test: services, versions, ZooKeeper root, session timeout;
* ``plan``           the seeded fault plan and the registry of fault kinds (:data:`plan.FAULT_KINDS`);
* ``injector``       carries the faults out on a running fleet: threads, target choice, one lock, records;
* ``faults``         how each fault kind is carried out: kind -> function in :data:`faults.INJECTORS`;
* ``registrations``  polls ``/nodes`` from outside: when each agent registered (again);
* ``invariants``     the judge: safety, order, liveness/convergence, journals, agents alive;
* ``result``         fault records, violations, the run's line and the summary line;
* ``artifacts``      the run's log, the observer's timeline, the code snapshot;
* ``run``            one seeded run end to end (``run_once``) and the CLI (``main``).

``scripts/chaos.py`` is the entry point; docs/chaos.md describes the runs.
"""
