from zkdeploy.cli.main import main

main()
