from audit.worker import main

main()
