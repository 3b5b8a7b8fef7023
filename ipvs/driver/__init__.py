"""The only I/O of PyIPVS: what the kernel's stack does around IPVS on a NIC.

:mod:`ipvs.driver.afpacket` runs the data path on real interfaces through
TPACKET rings (:mod:`ipvs.driver.ring`), with ARP and the neighbour cache
(:mod:`ipvs.driver.neigh`), fragment reassembly (:mod:`ipvs.driver.frag`),
masquerading (:mod:`ipvs.driver.masq`), a BPF socket filter
(:mod:`ipvs.driver.bpf`) and, in shared mode, nftables drop rules
(:mod:`ipvs.driver.nft`).  :mod:`ipvs.driver.replay` runs the core over a
pcap file (:mod:`ipvs.driver.pcap`) instead of a NIC.
"""
