package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

const usage = `keyledger: an event-sourced, audit-focused ledger of API keys

Usage:
  keyledger serve [flags]             run the server
  keyledger keys <command> [flags]    create|list|show|regenerate|revoke|disable|enable|delete|events
  keyledger principals <command>      create|list|show|update|disable|enable|issue-credential
  keyledger roles <command>           list|create|update|delete
  keyledger writers <command>         list|add|retire (the trusted writer keys)
  keyledger logs search [flags]       search or export the audit log
  keyledger alerts <command>          list|tail
  keyledger audit <command>           verify|prove|check-proof
  keyledger verify [flags]            verify a token
  keyledger token new                 print a fresh token for KEYLEDGER_ROOT_TOKEN
  keyledger whoami                    show the calling principal

Client commands talk to --server (KEYLEDGER_SERVER) with KEYLEDGER_TOKEN.
Run "keyledger <command> -h" for the flags of a command.
`

// Run runs the program with args and returns its exit code.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "token":
		return runToken(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	err := runClient(ctx, args, stdin, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "keyledger: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "keyledger: %v\n", err)
	return 1
}

// usageError is a mistake in the command line itself (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	m := &Main{Stdout: stdout}
	if err := m.ParseFlags(args, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "keyledger serve: %v\n", err)
		return 2
	}
	tuneGC(m.Logger)
	if err := m.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "keyledger serve: %v\n", err)
		return 1
	}
	select {
	case <-ctx.Done():
		m.Logger.Info("shutting down")
	case <-m.Done():
		// A component failed; the rest have stopped already.
	}
	if err := m.Close(); err != nil {
		fmt.Fprintf(stderr, "keyledger serve: %v\n", err)
		return 1
	}
	return 0
}
