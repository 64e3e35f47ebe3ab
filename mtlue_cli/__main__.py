from mtlue_cli.cli import main

main()
