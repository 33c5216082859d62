from service.tools.cli import main

main()
