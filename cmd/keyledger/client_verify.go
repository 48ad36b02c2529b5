package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/keyledger/keyledger/api"
)

type verifyRequest struct {
	Token      string `json:"token"`
	Permission string `json:"permission,omitempty"`
	IP         string `json:"ip,omitempty"`
}

// parseVerify reads the flags of "verify". The token to verify comes from
// --token (or "-", standard input) or --verify-token-file; --token-file is
// the caller's own credential, as in every command.
func (g *globals) parseVerify(args []string) (verifyRequest, error) {
	var (
		req                verifyRequest
		token, tokenFile   string
		tokenSet, fileSet  bool
		permission, ipAddr string
	)
	fs := newFlagSet("keyledger verify")
	g.register(fs)
	fs.StringVar(&token, "token", "", `token to verify; "-" reads it from standard input (a token on the command line is visible to other local users: prefer a file or "-")`)
	fs.StringVar(&tokenFile, "verify-token-file", "", `file holding the token to verify; "-" is standard input`)
	fs.StringVar(&permission, "permission", "", "permission the token must carry")
	fs.StringVar(&ipAddr, "ip", "", "address the token is presented from, checked against its allowed IPs")
	if _, err := g.parseCommand(fs, args, "--verify-token-file F | --token - | --token T [--permission P] [--ip IP]", 0); err != nil {
		return req, err
	}
	fs.Visit(func(f *flag.Flag) {
		tokenSet = tokenSet || f.Name == "token"
		fileSet = fileSet || f.Name == "verify-token-file"
	})
	switch {
	case !tokenSet && !fileSet && g.tokenFile != "":
		return req, usageError{"usage: keyledger verify: give the token to verify with --verify-token-file F or --token -; " +
			"--token-file is the caller's own token here too (it no longer names the token to verify)"}
	case tokenSet == fileSet:
		return req, usageError{"usage: keyledger verify: give exactly one of --token and --verify-token-file"}
	case tokenSet && token != "-":
		req.Token = strings.TrimSpace(token)
	default:
		name := tokenFile
		if tokenSet {
			name = "-"
		}
		t, err := readTokenFile(name, g.stdin)
		if err != nil {
			return req, err
		}
		req.Token = t
	}
	if req.Token == "" {
		return req, usageError{"usage: keyledger verify: the token is empty"}
	}
	req.Permission, req.IP = permission, ipAddr
	return req, nil
}

// runVerify exits 0 when the token is valid and 1 when it is not, printing
// the outcome code either way.
func runVerify(ctx context.Context, g *globals, name string, args []string) error {
	req, err := g.parseVerify(args)
	if err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var res api.VerifyResponse
	raw, err := c.do(ctx, "POST", "/v1/verify", nil, req, &res)
	if err != nil {
		return err
	}
	if g.json {
		if err := g.printJSON(raw); err != nil {
			return err
		}
	} else if err := renderVerify(g, res); err != nil {
		return err
	}
	if !res.Valid {
		return &apiError{Code: res.Code, Detail: "the token is not valid"}
	}
	return nil
}

func renderVerify(g *globals, res api.VerifyResponse) error {
	fmt.Fprintln(g.stdout, res.Code)
	fields := []field{{"Key", res.KeyID}, {"Owner", res.Owner}}
	if res.Valid {
		fields = append(fields,
			field{"Permissions", fmtList(res.Permissions, "none")},
			field{"Expires", fmtTimePtr(res.ExpiresAt, detailTime, "")})
	}
	fields = append(fields, field{"Event", res.EventID})
	return renderFields(g.stdout, fields)
}
