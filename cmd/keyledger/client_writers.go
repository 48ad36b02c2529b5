package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/keyledger/keyledger/api"
)

var writerCommands = map[string]command{
	"list":   {"", "list the writer keys whose signed messages the ledger applies", runWritersList},
	"add":    {"--key K [--name N] [--service S]", "trust a writer key (a verifying service's with --service)", runWritersAdd},
	"retire": {"KEY [--reason R]", "stop trusting a writer key for what is stored from now on", runWritersRetire},
}

var runWritersList = listCommand("/v1/writers", renderWriters)

func runWritersAdd(ctx context.Context, g *globals, name string, args []string) error {
	var req api.WriterRequest
	fs := g.flags(name)
	fs.StringVar(&req.Key, "key", "", "the writer's Ed25519 public key, unpadded base64url (required)")
	fs.StringVar(&req.Name, "name", "", "a name for people")
	fs.StringVar(&req.Service, "service", "", "the actor a verifying service records on its usage: the key may sign only those events")
	if _, err := g.parseCommand(fs, args, "--key K [--name N] [--service S]", 0); err != nil {
		return err
	}
	if strings.TrimSpace(req.Key) == "" {
		return usageError{"usage: " + fs.Name() + " --key K [--name N] [--service S]"}
	}
	return show(ctx, g, "POST", "/v1/writers", req, "Writer trusted.", renderWriters)
}

func runWritersRetire(ctx context.Context, g *globals, name string, args []string) error {
	req := api.WriterRequest{Retire: true}
	fs := g.flags(name)
	fs.StringVar(&req.Reason, "reason", "", "why")
	pos, err := g.parseCommand(fs, args, "KEY [--reason R]", 1)
	if err != nil {
		return err
	}
	req.Key = pos[0]
	return show(ctx, g, "POST", "/v1/writers", req, "Writer retired.", renderWriters)
}

func renderWriters(w io.Writer, l api.WriterList) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "KEY\tNAME\tSERVICE\tRETIRED")
	for _, x := range l.Writers {
		retired := "-"
		if x.RetiredAt != nil {
			retired = x.RetiredAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Key, cell(x.Name, 40), cell(x.Service, 40), retired)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l.UnsignedBefore != nil {
		fmt.Fprintf(w, "Unsigned messages stored before %s are accepted.\n", l.UnsignedBefore.UTC().Format(time.RFC3339))
	}
	return nil
}
