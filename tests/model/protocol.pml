/*
 * zkdeploy's restart protocol for one service, as a Promela model for spin.
 * docs/protocol.md ("The model") says what is abstracted and how to run it;
 * tests/model/test_spin.py runs every configuration below.
 *
 * ZooKeeper is the shared state below, changed only in atomic steps (every
 * ZooKeeper request, and a multi-op transaction, is atomic on the server).
 * One agent process per node runs the restart of docs/protocol.md:
 *
 *   queue -> wait to be first -> read /current, decide under the quorum rule
 *   -> conditional slot transaction -> leave the queue -> fence + stop
 *   -> fence + start the new release -> release the slot -> publish online
 *
 * One host process per node injects, a bounded number of times, the faults
 * of the real world: session expiry (the session's ephemeral nodes vanish at
 * once; the agent notices at its next request, rolls back if its service is
 * down, and registers again with a new session) and, with MAXCRASH > 0,
 * service crashes and recoveries that zkdeploy did not cause, seen through
 * the agent's health monitor.  Lost replies (a request applied on the server
 * whose answer never arrives, the session surviving) are chosen by the agent
 * process at the request itself, MAXLOST times at most in a run.
 *
 * Defaults model the protocol with the fixes described in docs/protocol.md.
 * Each flaw found in the implementation can be switched back on:
 *   GHOST_QUEUE_NODE    the queue node's name cannot be found again after a
 *                       lost create reply: the agent queues anew behind it
 *   GHOST_ON_LEAVE      leaving the queue gives up on a connection loss
 *   GHOST_SLOT          a lost reply to the slot transaction is taken as a
 *                       failure: the slot stays, owned by the live session
 *   PRESENT_QUORUM      a percentage quorum is of the nodes present, not of
 *                       the service's members
 *   FENCE_BEFORE_WRITE  the fence comes before the blocking /current write
 *                       of the phase change, not right before the step
 *   STALE_SELF_STATE    "not online: costs no quorum" trusts the node's own
 *                       /current entry (the monitor may not have caught up)
 *                       and the stop step does not look again
 *
 * A misused credential that may delete under the queue (any, without ACL
 * roles; under roles only an operator's, as each place in the queue has a
 * session of its own; docs/security.md) or a bug of the queue is modelled with
 *   STEAL=k             an attacker deletes the head's queue node, up to k
 *                       times, at any moment (a decided head may then take
 *                       its slot while the next waiter decides on the same
 *                       count); the slot transaction is conditional on the
 *                       service's availability epoch, which every take bumps
 *   NO_EPOCH            ... without that condition
 */

#ifndef N
#define N 3
#endif
/* QUORUM: nodes of the service that must stay up (a count); with PCT the
   quorum is PCT percent of the service's N members, rounded up. */
#ifndef QUORUM
#define QUORUM 2
#endif
#ifdef PCT
#define MEMBERS_REQUIRED ((PCT * N + 99) / 100)
#else
#define MEMBERS_REQUIRED QUORUM
#endif
#ifndef MAXEXP
#define MAXEXP 1            /* session expiries in a run */
#endif
#ifndef MAXLOST
#define MAXLOST 1           /* lost replies in a run */
#endif
#ifndef MAXCRASH
#define MAXCRASH 0          /* crashes of a service that zkdeploy did not cause */
#endif

#ifdef STEAL
#define QLEN (N + MAXLOST + STEAL)  /* ... and a node the attacker is about to delete */
#else
#define QLEN (N + MAXLOST)  /* one queue node per agent, plus ghosts */
#endif

/* /current/<service>/<node> */
mtype = { ABSENT, ONLINE, RESTARTING, FAILED };

/* ---- ZooKeeper ------------------------------------------------------------ */
bit   alive[N] = 1;  /* the agent's session lives (its ephemeral nodes exist) */
byte  q[QLEN];       /* /locks/S/queue in sequence order: i+1 = agent i's node,
                        i+1+N = a node of agent i's live session it does not
                        know about (a ghost); 0 = empty */
bit   slot[N];       /* /slots/S/<i>/slot, ephemeral, of agent i's session */
mtype cur[N] = ONLINE; /* /current/S/<i>, ephemeral, of agent i's session */
bit   dirty[N];      /* /current/S/<i> written by someone else since agent i
                        last read it: stands for its znode version */
bit   completed;     /* the deploy entry is marked done */

/* ---- the hosts -------------------------------------------------------------- */
bit   up[N] = 1;     /* node i's service answers */
bit   crashed[N];    /* ... is down through no action of zkdeploy */
bit   done[N];       /* ... runs the new release */
bit   busy[N];       /* the agent is in a restart phase (draining..rolling back):
                        its health monitor publishes nothing */
byte  nexp, nlost, ncrash;
#ifdef STEAL
byte  epoch;         /* /up/S's data version, mod 8: no take can come round to the same value in a run */
bit   stolen[N];     /* the attacker deleted agent i's queue node */
byte  nsteal;
#endif

hidden byte j, k;    /* scratch of the queue edits (inside d_steps only) */

#define GHOST(i) ((i) + 1 + N)

#define ON(x)   (cur[x] == ONLINE -> 1 : 0)
#define PRES(x) (cur[x] != ABSENT -> 1 : 0)
#define CMPL(x) (cur[x] == ABSENT || (cur[x] == ONLINE && done[x]))
#if N == 3
#define ONLINE_COUNT  (ON(0) + ON(1) + ON(2))
#define PRESENT_COUNT (PRES(0) + PRES(1) + PRES(2))
#define UP_COUNT      (up[0] + up[1] + up[2])
#define CRASHED_COUNT (crashed[0] + crashed[1] + crashed[2])
#define ALL_DONE      (done[0] && done[1] && done[2])
#define NO_SLOT       (!slot[0] && !slot[1] && !slot[2])
#define ALL_CMPL      (CMPL(0) && CMPL(1) && CMPL(2))
#elif N == 4
#define ONLINE_COUNT  (ON(0) + ON(1) + ON(2) + ON(3))
#define PRESENT_COUNT (PRES(0) + PRES(1) + PRES(2) + PRES(3))
#define UP_COUNT      (up[0] + up[1] + up[2] + up[3])
#define CRASHED_COUNT (crashed[0] + crashed[1] + crashed[2] + crashed[3])
#define ALL_DONE      (done[0] && done[1] && done[2] && done[3])
#define NO_SLOT       (!slot[0] && !slot[1] && !slot[2] && !slot[3])
#define ALL_CMPL      (CMPL(0) && CMPL(1) && CMPL(2) && CMPL(3))
#else
#error "N must be 3 or 4"
#endif

/* policy/quorum.py: how many must stay online */
#if defined(PRESENT_QUORUM) && defined(PCT)
#define REQUIRED ((PCT * PRESENT_COUNT + 99) / 100)
#else
#define REQUIRED MEMBERS_REQUIRED
#endif

/* "not online: restarting costs no quorum" */
#ifdef STALE_SELF_STATE
#define SELF_DOWN(i) (cur[i] != ONLINE)
#else
#define SELF_DOWN(i) (cur[i] != ONLINE && !up[i])   /* and a local probe agrees */
#endif
#define MAY_GO_DOWN(i) (SELF_DOWN(i) || ONLINE_COUNT - 1 >= REQUIRED)

/* Safety: zkdeploy never takes the service below its quorum; the nodes down
   through no action of zkdeploy are the only excuse. */
#define SAFE (UP_COUNT + CRASHED_COUNT >= MEMBERS_REQUIRED)

/* Completion (agent/deploys.py): every present node online at the new
   release, no slot taken, at least one node present. */
#define COMPLETE (PRESENT_COUNT > 0 && NO_SLOT && ALL_CMPL)

ltl live { <> (ALL_DONE && completed) }

/* ---- queue edits (sequence order = array order) ------------------------------ */
inline q_append(v) {
	d_step {
		assert(q[QLEN - 1] == 0);
		j = 0;
		do
		:: q[j] != 0 -> j++
		:: else -> break
		od;
		q[j] = v;
		j = 0
	}
}

inline q_remove(v) {    /* delete the first node whose value is v, if any */
	d_step {
		j = 0;
		do
		:: j < QLEN && q[j] != v -> j++
		:: else -> break
		od;
		do
		:: j < QLEN - 1 -> q[j] = q[j + 1]; j++
		:: else -> break
		od;
		if
		:: j == QLEN - 1 -> q[j] = 0
		:: else -> skip
		fi;
		j = 0
	}
}

inline q_relabel(from, to) {   /* the first node valued from becomes to */
	d_step {
		j = 0;
		do
		:: j < QLEN && q[j] != from -> j++
		:: else -> break
		od;
		if
		:: j < QLEN -> q[j] = to
		:: else -> skip
		fi;
		j = 0
	}
}

inline q_purge(i) {     /* session expiry: every node of agent i's session goes */
	d_step {
		j = 0; k = 0;
		do
		:: j < QLEN ->
			if
			:: q[j] != i + 1 && q[j] != GHOST(i) -> q[k] = q[j]; k++
			:: else -> skip
			fi;
			j++
		:: else -> break
		od;
		do
		:: k < QLEN -> q[k] = 0; k++
		:: else -> break
		od;
		j = 0; k = 0
	}
}

/* ---- one agent ---------------------------------------------------------------------- */
proctype agent(byte i)
{
	bit cheap;      /* the slot was taken as "not online: costs no quorum" */
	bit stopped;    /* this restart stopped the service (a roll-back starts it) */
#ifdef STEAL
	byte seen;      /* the epoch the decision counted at */
#endif

restart:
	/* join: create <queue>/q-<uuid>__<seq>, ephemeral and sequential */
	atomic {
#ifdef STEAL
		stolen[i] = 0;
#endif
		if
		:: !alive[i] -> goto lost_session
		:: else -> skip
		fi;
		if
		:: nlost < MAXLOST -> nlost++;
#ifdef GHOST_QUEUE_NODE
			/* applied, but the agent never learns the name: it gives up
			   for this cycle and queues again at the next */
			q_append(GHOST(i));
			goto restart
#else
			q_append(i + 1);
			goto find_queue_node
#endif
		:: true -> q_append(i + 1)
		fi
	};
	goto wait_turn;

find_queue_node:
	/* same session back: list the queue, find the node by its unique prefix */
	atomic {
		if
		:: !alive[i] -> goto lost_session
		:: else -> skip
		fi
	};

wait_turn:
	/* first in the queue; re-decide on every change of /current (the watch).
	   The rule says wait: the agent blocks here.  The count and the epoch are
	   read in one step: Session.tally reads up/S's stat, the count and the stat
	   again and uses the count only when both stats agree, so they are of one
	   state (tests/integration/test_store.py makes a take between the reads). */
	atomic {
#ifdef STEAL
		(!alive[i] || stolen[i] || (q[0] == i + 1 && MAY_GO_DOWN(i))) ->
		if
		:: !alive[i] -> goto lost_session
		:: alive[i] && stolen[i] -> goto restart   /* our node is gone: queue anew */
		:: else -> cheap = SELF_DOWN(i); dirty[i] = 0; seen = epoch
		fi
#else
		(!alive[i] || (q[0] == i + 1 && MAY_GO_DOWN(i))) ->
		if
		:: !alive[i] -> goto lost_session
		:: else -> cheap = SELF_DOWN(i); dirty[i] = 0
		fi
#endif
	};

	/* take_slot: one transaction, set /current/S/<i> = restarting if its
	   version is the one read, and create /slots/S/<i>/slot (ephemeral) */
	atomic {
		if
		:: !alive[i] -> goto lost_session
		:: alive[i] && (dirty[i] || slot[i]) ->
			/* BadVersion, or NodeExists: the agent gives up for this cycle */
			q_remove(i + 1);
			cheap = 0;
			goto restart
#if defined(STEAL) && !defined(NO_EPOCH)
		:: alive[i] && !dirty[i] && !slot[i] && !cheap && epoch != seen ->
			/* BadVersion on the epoch: a take since the count; decide again */
			q_remove(i + 1);
			goto restart
#endif
		:: else ->
#if defined(STEAL) && !defined(NO_EPOCH)
			if
			:: !cheap && epoch != seen -> assert(false)   /* excluded by the option above */
			:: else -> skip
			fi;
#endif
#ifdef STEAL
			if
			:: !cheap -> epoch = (epoch + 1) % 8
			:: else -> skip
			fi;
#endif
			slot[i] = 1;
			cur[i] = RESTARTING;
			if
			:: nlost < MAXLOST -> nlost++;
#ifdef GHOST_SLOT
				/* taken as a failure: leave the queue, publish the local
				   record (still online), try again next cycle */
				q_remove(i + 1);
				cur[i] = ONLINE;
				cheap = 0;
				goto restart
#else
				goto find_slot
#endif
			:: true -> skip
			fi
		fi
	};
	goto leave_queue;

find_slot:
	/* same session back: do we own /slots/S/<i>/slot?  Then it applied. */
	atomic {
		if
		:: !alive[i] -> goto lost_session
		:: else -> assert(slot[i] && cur[i] == RESTARTING)
		fi
	};

leave_queue:
	/* delete the queue node: the next waiter decides while we restart */
	atomic {
#ifdef GHOST_ON_LEAVE
		if
		:: alive[i] && nlost < MAXLOST -> nlost++; q_relabel(i + 1, GHOST(i))
		:: true -> q_remove(i + 1)
		fi
#else
		q_remove(i + 1)   /* retried through connection losses in the same session */
#endif
	};

	/* drain + stop, fenced */
#ifdef FENCE_BEFORE_WRITE
	atomic {
		if
		:: !(alive[i] && slot[i]) -> goto fenced
		:: else -> busy[i] = 1
		fi
	};
	/* machine.to(DRAINING): publish /current, a blocking ZooKeeper write
	   whose failure is only logged; the session may end meanwhile */
	busy[i] = 1;
	atomic {
#else
	atomic {
		if
		:: !(alive[i] && slot[i]) -> goto fenced
		:: else -> busy[i] = 1
		fi;
#endif
		assert(alive[i] && slot[i]);   /* no destructive step without a live slot */
		if
#ifndef STALE_SELF_STATE
		:: cheap && up[i] ->
			/* taken as "costs no quorum" but the service answers now:
			   stop nothing, give the slot back, queue again */
			slot[i] = 0;
			cur[i] = ONLINE;
			busy[i] = 0;
			cheap = 0;
			goto restart
#endif
		:: else ->
			stopped = up[i];
			up[i] = 0
		fi
	};

	/* switch + start the new release, fenced */
	atomic {
		if
		:: !(alive[i] && slot[i]) -> goto fenced
		:: else ->
			up[i] = 1;
			crashed[i] = 0;
			done[i] = 1;
			stopped = 0;
			cheap = 0;
			busy[i] = 0
		fi
	};

	/* release the slot (retried in the same session), then publish online */
	atomic {
		if
		:: alive[i] -> slot[i] = 0
		:: else -> skip
		fi
	};
	atomic {
		if
		:: alive[i] -> cur[i] = ONLINE
		:: else -> goto lost_session
		fi
	};
	goto finished;

fenced:
	/* LockLostError: the slot or the session is gone. Roll back: start the
	   old release if this restart stopped it. The service stays down until
	   this step runs. */
	atomic {
		assert(!alive[i]);
		if
		:: stopped -> up[i] = 1; crashed[i] = 0
		:: else -> skip
		fi;
		stopped = 0;
		cheap = 0;
		busy[i] = 0
	};

lost_session:
	/* the next cycle registers with a new session: /current from a local probe */
	atomic {
		!alive[i] ->
		alive[i] = 1;
		cur[i] = (up[i] -> ONLINE : FAILED);
		dirty[i] = 1;
		if
		:: done[i] -> goto finished
		:: else -> goto restart
		fi
	};

finished:
end_finished:
	do
	:: atomic {   /* register again after an expiry */
		!alive[i] ->
		alive[i] = 1;
		cur[i] = (up[i] -> ONLINE : FAILED);
		dirty[i] = 1
	   }
	:: atomic { !completed && COMPLETE -> completed = 1 }   /* maybe_complete */
	od
}

/* ---- the world around one node -------------------------------------------------------- */
proctype host(byte i)
{
end_host:
	do
	:: atomic {   /* the session expires: its ephemeral nodes vanish at once */
		nexp < MAXEXP && alive[i] ->
		nexp++;
		alive[i] = 0;
		slot[i] = 0;
		cur[i] = ABSENT;
		q_purge(i)
	   }
#if MAXCRASH > 0
	:: atomic { ncrash < MAXCRASH && up[i] -> ncrash++; up[i] = 0; crashed[i] = 1 }
	:: atomic { crashed[i] -> up[i] = 1; crashed[i] = 0 }   /* it answers again by itself */
	:: atomic {   /* the health monitor flips online <-> failed */
		alive[i] && !busy[i] &&
		((cur[i] == ONLINE && !up[i]) || (cur[i] == FAILED && up[i])) ->
		cur[i] = (up[i] -> ONLINE : FAILED);
		dirty[i] = 1
	   }
#endif
	od
}

#ifdef STEAL
/* A misused credential: deletes the head's queue node, STEAL times at most. */
proctype attacker()
{
end_steal:   /* it may wait for ever for a queue to steal from */
	do
	:: atomic {
		nsteal < STEAL && q[0] != 0 && q[0] <= N ->
		stolen[q[0] - 1] = 1;
		nsteal++;
		j = 0;   /* the head's node goes: the others move up */
		do
		:: j < QLEN - 1 -> q[j] = q[j + 1]; j++
		:: else -> break
		od;
		q[QLEN - 1] = 0;
		j = 0
	   }
	:: nsteal >= STEAL -> break
	od
}
#endif

/* Checks SAFE in every reachable state (it may run at any moment). */
active proctype safety()
{
	assert(SAFE)
}

init {
	atomic {
		j = 0;
		do
		:: j < N ->
			run host(j);
			run agent(j);
			j++
		:: else -> break
		od;
#ifdef STEAL
		run attacker();
#endif
		j = 0
	}
}
