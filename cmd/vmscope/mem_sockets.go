package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/internal/output"
)

// newMemSocketsCmd is `vmscope mem sockets`: the TCP and UDP sockets of
// the kernel's own hash tables (tcp_hashinfo, udp_table), as netstat -an
// shows them, with the socket's inode and table.
func newMemSocketsCmd() *cobra.Command {
	var f memFlags
	return memVerb("sockets", "TCP and UDP sockets (IPv4, IPv6) from the kernel's hash tables, as netstat -an shows them", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		socks, probs, err := m.k.Sockets(ctx)
		if err != nil {
			return err
		}
		return writeRows(out, errOut, f.format, "sockets", socks, probs, func(w io.Writer) error {
			tw := output.NewTable(w)
			fmt.Fprintln(tw, "PROTO\tLOCAL\tREMOTE\tSTATE\tINODE\tTABLE")
			for _, s := range socks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", s.Proto, s.Local, s.Remote, s.StateName(), s.Inode, s.Table)
			}
			return tw.Flush()
		})
	})
}
