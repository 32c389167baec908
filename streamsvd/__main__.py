from streamsvd.cli import main

main()
