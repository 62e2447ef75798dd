from mailrelay.cli import main

main()
