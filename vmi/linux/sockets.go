package linux

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmi"
)

// Caps on the socket hash walks: a hostile table size or chain is an
// error naming the table, not hours of reads.
const (
	maxHashBuckets = 1 << 24 // buckets of one hash table (the kernel sizes ehash by memory)
	MaxSockets     = 1 << 20 // sockets of all tables together
	hashChunk      = 4096    // buckets read at once
)

// TCP states (include/net/tcp_states.h): part of the ABI /proc/net/tcp
// prints.
const (
	TCPEstablished = 1
	TCPTimeWait    = 6
	TCPClose       = 7
	TCPListen      = 10
	TCPNewSynRecv  = 12
	tcpSynRecv     = 3
)

// Address families (include/linux/socket.h): ABI.
const (
	afInet  = 2
	afInet6 = 10
)

// Socket is an internet socket found in the kernel's own hash tables, the
// tables /proc/net/{tcp,tcp6,udp,udp6} iterate: TCP's established hash
// (full sockets, TIME_WAIT and request sockets) and listening hash, UDP's
// table. Kernel sockets that are on none of them (never hashed) are not
// found.
type Socket struct {
	Addr   uint64         `json:"sock"`  // struct sock, inet_timewait_sock or request_sock
	Table  string         `json:"table"` // "tcp established", "tcp listening", "udp"
	Proto  string         `json:"proto"` // tcp, tcp6, udp, udp6 (by sk_family)
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// State is sk_state as /proc/net shows it: a request socket
	// (TCP_NEW_SYN_RECV) as TCP_SYN_RECV.
	State uint8  `json:"state"`
	Inode uint64 `json:"inode"` // the socket inode (0 for TIME_WAIT, request and orphaned sockets)
	Net   uint64 `json:"net"`   // struct net of its namespace
}

// Sockets lists the TCP and UDP sockets (IPv4 and IPv6) of every network
// namespace from tcp_hashinfo and udp_table, sorted by table and address.
// A chain that loops, runs past its cap or cannot be read is a Problem
// naming the table, bucket and address; the walk goes on with the next
// bucket.
func (k *Kernel) Sockets(ctx context.Context) ([]Socket, []Problem, error) {
	w := &sockWalk{k: k, ctx: ctx}
	if err := w.tcp(); err != nil {
		return nil, nil, err
	}
	if err := w.udp(); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	sort.SliceStable(w.out, func(i, j int) bool {
		if w.out[i].Table != w.out[j].Table {
			return w.out[i].Table < w.out[j].Table
		}
		return w.out[i].Addr < w.out[j].Addr
	})
	return w.out, w.probs, nil
}

type sockWalk struct {
	k     *Kernel
	ctx   context.Context
	out   []Socket
	probs []Problem
	n     int // nodes visited, all tables
}

func (w *sockWalk) symbol(name string) (vmi.VA, error) {
	a, ok := w.k.Symbols.Addr(name)
	if !ok {
		return 0, fmt.Errorf("linux: no %s symbol: %w", name, ErrLayout)
	}
	return a, nil
}

// tcp walks tcp_hashinfo: ehash (ehash_mask+1 buckets, hlist_nulls
// chains through skc_nulls_node) and the listening buckets (lhash2 with
// lhash2_mask+1 buckets on 5.19 and later, the listening_hash array
// before; hlist_nulls chains through skc_nulls_node in both).
func (w *sockWalk) tcp() error {
	k := w.k
	hi, err := w.symbol("tcp_hashinfo")
	if err != nil {
		return err
	}
	bsz, chainOff, nodeOff, err := k.bucketLayout("inet_ehash_bucket", "chain", "skc_nulls_node")
	if err != nil {
		return err
	}
	o := k.obj("inet_hashinfo", hi)
	ehash := o.ptr("ehash")
	mask := o.uint("ehash_mask")
	if o.err != nil {
		return o.err
	}
	w.table("tcp established", ehash, mask, bsz, chainOff, true, nodeOff)

	lsz, lbOff, _, err := k.bucketLayout("inet_listen_hashbucket", "nulls_head", "skc_nulls_node")
	if err != nil {
		return err
	}
	if f, err := k.field("inet_hashinfo", "listening_hash"); err == nil {
		// before 5.19: an array inside inet_hashinfo
		arr, ok := btf.UnderlyingType(f.typ).(*btf.Array)
		if !ok || arr.Nelems == 0 {
			return fmt.Errorf("linux: inet_hashinfo.listening_hash is not an array: %w", ErrLayout)
		}
		n := arr.Nelems
		w.table("tcp listening", hi+vmi.VA(f.off), uint64(n-1), lsz, lbOff, true, nodeOff)
		return nil
	}
	lhash := o.ptr("lhash2")
	lmask := o.uint("lhash2_mask")
	if o.err != nil {
		return o.err
	}
	w.table("tcp listening", lhash, lmask, lsz, lbOff, true, nodeOff)
	return nil
}

// udp walks udp_table: mask+1 slots, hlist chains through skc_node.
func (w *sockWalk) udp() error {
	k := w.k
	ut, err := w.symbol("udp_table")
	if err != nil {
		return err
	}
	sz, headOff, nodeOff, err := k.bucketLayout("udp_hslot", "head", "skc_node")
	if err != nil {
		return err
	}
	o := k.obj("udp_table", ut)
	hash := o.ptr("hash")
	mask := o.uint("mask")
	if o.err != nil {
		return o.err
	}
	w.table("udp", hash, mask, sz, headOff, false, nodeOff)
	return nil
}

// bucketLayout is the BTF layout of a hash table's buckets: the size of
// struct bucket, the offset of its chain head (member head), and the
// offset of the chain's node (member node) in sock_common.
func (k *Kernel) bucketLayout(bucket, head, node string) (size, headOff, nodeOff uint64, err error) {
	if size, err = k.Sizeof(bucket); err != nil {
		return
	}
	if headOff, err = k.Field(bucket, head); err != nil {
		return
	}
	nodeOff, err = k.Field("sock_common", node)
	return
}

// table walks mask+1 buckets of size bsz at base, each holding the head
// of a chain (its first pointer) at headOff; nulls chains end at an odd
// pointer, plain ones at NULL. Each node is nodeOff bytes into its sock.
func (w *sockWalk) table(name string, base vmi.VA, mask, bsz, headOff uint64, nulls bool, nodeOff uint64) {
	n := mask + 1
	if mask >= maxHashBuckets || bsz > 4096 || headOff+8 > bsz {
		w.probs = append(w.probs, problem(name+" hash", base, fmt.Errorf("%d buckets of %d bytes (cap %d): %w", n, bsz, maxHashBuckets, vmi.ErrCorrupt)))
		return
	}
	buf := make([]byte, min(n, hashChunk)*bsz)
	for start := uint64(0); start < n; start += hashChunk {
		if w.ctx.Err() != nil {
			return
		}
		cnt := min(n-start, hashChunk)
		at, ok := base.Add(start * bsz)
		if !ok {
			w.probs = append(w.probs, problem(name+" hash", base, fmt.Errorf("bucket %d wraps past the top of the address space: %w", start, vmi.ErrCorrupt)))
			return
		}
		b := buf[:cnt*bsz]
		if _, err := w.k.AS.ReadVirt(b, at); err != nil {
			w.probs = append(w.probs, problem(fmt.Sprintf("%s hash buckets %d-%d", name, start, start+cnt-1), at, err))
			continue
		}
		for i := uint64(0); i < cnt; i++ {
			first := vmi.VA(binary.LittleEndian.Uint64(b[i*bsz+headOff:]))
			if first == 0 || (nulls && first&1 == 1) {
				continue
			}
			if !w.chain(fmt.Sprintf("%s hash bucket %d", name, start+i), name, at+vmi.VA(i*bsz+headOff), nulls, nodeOff) {
				return
			}
		}
	}
}

// chain follows one hash chain from its head (the bucket's pointer to
// its first node); it returns false once the cap on all sockets is
// reached or ctx is done.
func (w *sockWalk) chain(what, table string, head vmi.VA, nulls bool, nodeOff uint64) bool {
	end := func(n vmi.VA) bool { return n == 0 || (nulls && n&1 == 1) }
	if p := w.k.chainWalk(what, head, MaxSockets-w.n, end, func(node vmi.VA) bool {
		if w.ctx.Err() != nil {
			return false
		}
		w.n++
		sk := node - vmi.VA(nodeOff)
		s, err := w.k.socket(sk, table)
		if err != nil {
			w.probs = append(w.probs, problem(what, sk, err))
		} else if s.Proto != "" {
			w.out = append(w.out, s)
		}
		return true
	}); p != nil {
		w.probs = append(w.probs, *p)
	}
	return w.n < MaxSockets && w.ctx.Err() == nil
}

// socket reads the sock_common at sk (and, for a full socket, the inode
// of its struct socket). A socket of another family (none is hashed in
// these tables) has an empty Proto.
func (k *Kernel) socket(sk vmi.VA, table string) (Socket, error) {
	o := k.obj("sock_common", sk)
	fam := o.uint("skc_family")
	state := uint8(o.uint("skc_state"))
	num := uint16(o.uint("skc_num"))
	dport := uint16(o.uint("skc_dport"))
	net := o.ptr("skc_net.net")
	s := Socket{Addr: uint64(sk), Table: table, State: state, Net: uint64(net)}
	proto := "tcp"
	if table == "udp" {
		proto = "udp"
	}
	dport = dport>>8 | dport<<8 // network order
	switch fam {
	case afInet:
		var l, r [4]byte
		copy(l[:], o.read("skc_rcv_saddr", 4))
		copy(r[:], o.read("skc_daddr", 4))
		s.Proto = proto
		s.Local = netip.AddrPortFrom(netip.AddrFrom4(l), num)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4(r), dport)
	case afInet6:
		var l, r [16]byte
		copy(l[:], o.read("skc_v6_rcv_saddr", 16))
		copy(r[:], o.read("skc_v6_daddr", 16))
		s.Proto = proto + "6"
		s.Local = netip.AddrPortFrom(netip.AddrFrom16(l), num)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16(r), dport)
	}
	if o.err != nil {
		return s, o.err
	}
	if s.Proto == "" {
		return s, nil
	}
	switch {
	case table != "udp" && state == TCPTimeWait:
		return s, nil // an inet_timewait_sock: no struct socket
	case table != "udp" && state == TCPNewSynRecv:
		s.State = tcpSynRecv // a request_sock, shown as SYN_RECV
		return s, nil
	}
	ino, err := k.sockInode(sk)
	s.Inode = ino
	return s, err
}

// sockInode is sock_i_ino: the inode number of the struct socket that
// sk->sk_socket points to (it sits in a struct socket_alloc beside its
// inode); 0 for a socket without one.
func (k *Kernel) sockInode(sk vmi.VA) (uint64, error) {
	o := k.obj("sock", sk)
	sock := o.ptr("sk_socket")
	if o.err != nil || sock == 0 {
		return 0, o.err
	}
	so, err := k.Field("socket_alloc", "socket")
	if err != nil {
		return 0, err
	}
	io, err := k.Field("socket_alloc", "vfs_inode")
	if err != nil {
		return 0, err
	}
	ino, err := k.ReadUint("inode", sock-vmi.VA(so)+vmi.VA(io), "i_ino")
	if err != nil {
		return 0, fmt.Errorf("linux: inode of socket %#x: %w", uint64(sock), err)
	}
	return ino, nil
}

// tcpStateNames are the TCP states as netstat names them.
var tcpStateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
	"CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

// StateName is the state as netstat -an shows it: a TCP state's name; for
// UDP ESTABLISHED (connected) or "" (not connected).
func (s Socket) StateName() string {
	if s.Table == "udp" {
		if s.State == TCPEstablished {
			return "ESTABLISHED"
		}
		return ""
	}
	if int(s.State) < len(tcpStateNames) {
		return tcpStateNames[s.State]
	}
	return fmt.Sprintf("state %d", s.State)
}

// TaskNet is the network namespace (struct net) of a task:
// task->nsproxy->net_ns.
func (k *Kernel) TaskNet(task vmi.VA) (vmi.VA, error) {
	o := k.obj("task_struct", task)
	ns := o.ptr("nsproxy")
	if o.err != nil {
		return 0, o.err
	}
	if ns == 0 {
		return 0, fmt.Errorf("linux: task %#x has no nsproxy (exiting): %w", uint64(task), vmi.ErrCorrupt)
	}
	n := k.obj("nsproxy", ns)
	net := n.ptr("net_ns")
	return net, n.err
}
