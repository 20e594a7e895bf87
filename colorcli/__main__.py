from colorcli.app import main

main()
