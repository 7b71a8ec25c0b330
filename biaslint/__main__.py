from biaslint.cli import main

main()
