from warmtransfer.cli.app import main

main()
