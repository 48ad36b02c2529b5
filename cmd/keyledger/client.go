package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	apiclient "github.com/keyledger/keyledger/api/client"
	"github.com/keyledger/keyledger/domain"
)

// defaultServer is where the client looks for a server when neither
// --server nor KEYLEDGER_SERVER says otherwise.
const defaultServer = "http://127.0.0.1:8080"

// clientFlagsHelp follows the help of every client command.
const clientFlagsHelp = `Client flags (accepted before or after the command):
  --server URL        keyledger server (KEYLEDGER_SERVER, default ` + defaultServer + `)
  --token-file FILE   file holding the caller's own token, in every command
                      (else KEYLEDGER_TOKEN, then KEYLEDGER_TOKEN_FILE)
  --json              print the server's JSON instead of a table
`

// globals are the flags every client command accepts. Secrets never come
// from a flag value: the caller's token is read from the environment or
// from a file.
type globals struct {
	server    string
	tokenFile string
	json      bool

	stdin          io.Reader
	stdout, stderr io.Writer
	// getenv is os.Getenv; tests replace it.
	getenv func(string) string
	// shared names the flags register added to each flag set, so a
	// command's help lists only its own.
	shared map[*flag.FlagSet]map[string]bool
}

// register adds the global flags to fs. --token-file is the caller's own
// credential in every command; --auth-token-file, its old name on verify,
// is refused with the new one.
func (g *globals) register(fs *flag.FlagSet) {
	if g.shared == nil {
		g.shared = map[*flag.FlagSet]map[string]bool{}
	}
	g.shared[fs] = map[string]bool{"server": true, "token-file": true, "auth-token-file": true, "json": true}
	fs.StringVar(&g.server, "server", g.server, "keyledger server URL (KEYLEDGER_SERVER)")
	fs.StringVar(&g.tokenFile, "token-file", g.tokenFile, "file holding the caller's token (else KEYLEDGER_TOKEN)")
	fs.Func("auth-token-file", "renamed --token-file", func(string) error {
		return errors.New("--auth-token-file is now --token-file (the caller's own token, in every command)")
	})
	fs.BoolVar(&g.json, "json", g.json, "print the server's JSON")
}

// runClient runs a client subcommand against a keyledger server.
func runClient(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}
	return g.run(ctx, args)
}

func (g *globals) run(ctx context.Context, args []string) error {
	// Global flags may come before the command: keyledger --json keys list.
	fs := newFlagSet("keyledger")
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		return g.flagError(fs, err, "keyledger [client flags] <command> ...")
	}
	args = fs.Args()
	if len(args) == 0 {
		return usageError{"usage: keyledger <command>; run \"keyledger help\""}
	}
	groups := map[string]map[string]command{
		"keys":       keyCommands,
		"principals": principalCommands,
		"roles":      roleCommands,
		"writers":    writerCommands,
		"alerts":     alertCommands,
		"logs":       logCommands,
		"audit":      auditCommands,
	}
	name, rest := args[0], args[1:]
	if cmds, ok := groups[name]; ok {
		if len(rest) == 0 {
			return usageError{fmt.Sprintf("usage: keyledger %s <command>; run \"keyledger %s help\"", name, name)}
		}
		if rest[0] == "-h" || rest[0] == "--help" || rest[0] == "help" {
			fmt.Fprintf(g.stdout, "Usage: keyledger %s <command> [flags]\n\nCommands:\n%s\n%s", name, commandList(name, cmds), clientFlagsHelp)
			return flag.ErrHelp
		}
		cmd, ok := cmds[rest[0]]
		if !ok {
			return usageError{fmt.Sprintf("unknown command %q; run \"keyledger %s help\"", name+" "+rest[0], name)}
		}
		return cmd.run(ctx, g, name+" "+rest[0], rest[1:])
	}
	if cmd, ok := topCommands[name]; ok {
		return cmd.run(ctx, g, name, rest)
	}
	return usageError{fmt.Sprintf("unknown command %q; run \"keyledger help\"", name)}
}

// command is one client subcommand.
type command struct {
	args    string // positional arguments, for the usage line
	summary string
	run     func(ctx context.Context, g *globals, name string, args []string) error
}

var topCommands = map[string]command{
	"verify": {"--verify-token-file F | --token -", "verify a token", runVerify},
	"whoami": {"", "show the calling principal and key", runWhoami},
}

func commandList(group string, cmds map[string]command) string {
	var b strings.Builder
	tw := newTable(&b)
	for _, name := range sortedKeys(cmds) {
		fmt.Fprintf(tw, "  keyledger %s %s %s\t%s\n", group, name, cmds[name].args, cmds[name].summary)
	}
	tw.Flush()
	return b.String()
}

// flags returns the flag set of the client command name, with the client
// flags registered.
func (g *globals) flags(name string) *flag.FlagSet {
	fs := newFlagSet("keyledger " + name)
	g.register(fs)
	return fs
}

// request sends one request with the caller's token and decodes the answer
// into out; it returns the raw body for --json.
func (g *globals) request(ctx context.Context, method, path string, query url.Values, body, out any) ([]byte, error) {
	c, err := g.newClient(true)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, method, path, query, body, out)
}

// show prints a request's answer: the server's JSON under --json, else the
// header line (when not empty) and what render prints.
func show[T any](ctx context.Context, g *globals, method, path string, body any, header string, render func(io.Writer, T) error) error {
	var v T
	raw, err := g.request(ctx, method, path, nil, body, &v)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	if header != "" {
		fmt.Fprintln(g.stdout, header)
	}
	return render(g.stdout, v)
}

// idPath parses the flags of a command on one key or principal, whose one
// argument is its id, and returns base + the id.
func (g *globals) idPath(fs *flag.FlagSet, args []string, argNames, base string) (string, error) {
	pos, err := g.parseCommand(fs, args, argNames, 1)
	if err != nil {
		return "", err
	}
	return base + url.PathEscape(pos[0]), nil
}

// idCommand is a command with no flags of its own on one key or principal:
// method base/ID+suffix, printed with render.
func idCommand[T any](method, base, suffix, header string, render func(io.Writer, T) error) func(context.Context, *globals, string, []string) error {
	return func(ctx context.Context, g *globals, name string, args []string) error {
		path, err := g.idPath(g.flags(name), args, "ID", base)
		if err != nil {
			return err
		}
		return show(ctx, g, method, path+suffix, nil, header, render)
	}
}

// newFlagSet returns a flag set whose errors come back to the caller
// instead of being printed with the full usage.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// flagError turns a parse error into a one-line usage error, or prints the
// command's help for -h.
func (g *globals) flagError(fs *flag.FlagSet, err error, synopsis string) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(g.stdout, "Usage: %s\n\n", synopsis)
		if own := g.commandFlags(fs); own != "" {
			fmt.Fprintf(g.stdout, "Flags:\n%s\n", own)
		}
		fmt.Fprint(g.stdout, clientFlagsHelp)
		return flag.ErrHelp
	}
	return usageError{fmt.Sprintf("usage: %v (see \"%s -h\")", err, fs.Name())}
}

// commandFlags lists a command's own flags; the client flags every
// command shares are described once, after them.
func (g *globals) commandFlags(fs *flag.FlagSet) string {
	var b strings.Builder
	tw := newTable(&b)
	fs.VisitAll(func(f *flag.Flag) {
		if g.shared[fs][f.Name] {
			return
		}
		typ, usage := flag.UnquoteUsage(f)
		if typ != "" {
			typ = " " + typ
		}
		fmt.Fprintf(tw, "  --%s%s\t%s\n", f.Name, typ, usage)
	})
	tw.Flush()
	return b.String()
}

// parseCommand parses a subcommand's flags, which may be interleaved with
// its positional arguments (keys show ID --json), and checks the number of
// positional arguments; nargs < 0 accepts any number. Everything after
// "--" is positional.
func (g *globals) parseCommand(fs *flag.FlagSet, args []string, argNames string, nargs int) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, g.flagError(fs, err, strings.TrimSpace(fs.Name()+" "+argNames)+" [flags]")
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if nargs >= 0 && len(pos) != nargs {
		switch {
		case nargs == 0:
			return nil, usageError{fmt.Sprintf("usage: %s takes no arguments, got %q", fs.Name(), pos[0])}
		case len(pos) < nargs:
			return nil, usageError{fmt.Sprintf("usage: %s %s", fs.Name(), argNames)}
		default:
			return nil, usageError{fmt.Sprintf("usage: %s %s: unexpected argument %q", fs.Name(), argNames, pos[nargs])}
		}
	}
	return pos, nil
}

// kvMap is a repeatable key=value flag.
type kvMap map[string]string

func (m kvMap) String() string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func (m kvMap) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", v)
	}
	m[k] = val
	return nil
}

// client is the HTTP plumbing every command shares: the server's base URL,
// the caller's token, and the translation of problem documents into
// errors.
type client struct {
	base  *url.URL
	token string
	http  *http.Client
	api   *apiclient.Client
}

// apiError is a problem document from the server, or a failure to reach
// it. Its text is "<code>: <detail>", so Run prints
// "keyledger: <code>: <detail>".
type apiError struct {
	Status int
	Code   string
	Detail string
}

func (e *apiError) Error() string {
	if e.Detail == "" {
		return e.Code
	}
	return e.Code + ": " + e.Detail
}

// newClient resolves the server and the caller's token. needToken is false
// for the few public routes.
func (g *globals) newClient(needToken bool) (*client, error) {
	server := g.server
	if server == "" {
		server = g.getenv("KEYLEDGER_SERVER")
	}
	if server == "" {
		server = defaultServer
	}
	base, err := parseServer(server)
	if err != nil {
		return nil, err
	}
	c := &client{base: base, http: &http.Client{Timeout: 60 * time.Second}}
	if needToken {
		if c.token, err = g.callerToken(); err != nil {
			return nil, err
		}
	}
	if c.api, err = apiclient.New(base.String(), c.token); err != nil {
		return nil, usageError{fmt.Sprintf("usage: --server %q is not an http(s) URL", server)}
	}
	c.api.HTTP, c.api.UserAgent = c.http, "keyledger-cli"
	return c, nil
}

// parseServer accepts "http(s)://host:port[/prefix]" or a bare "host:port".
func parseServer(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usageError{fmt.Sprintf("usage: --server %q is not an http(s) URL", s)}
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// callerToken reads the caller's credential: --token-file, then
// KEYLEDGER_TOKEN, then KEYLEDGER_TOKEN_FILE.
func (g *globals) callerToken() (string, error) {
	if g.tokenFile != "" {
		return readTokenFile(g.tokenFile, g.stdin)
	}
	if t := strings.TrimSpace(g.getenv("KEYLEDGER_TOKEN")); t != "" {
		return t, nil
	}
	if f := g.getenv("KEYLEDGER_TOKEN_FILE"); f != "" {
		return readTokenFile(f, g.stdin)
	}
	return "", usageError{"no_token: set KEYLEDGER_TOKEN or give --token-file"}
}

// readTokenFile reads a token from a file ("-" is stdin), allowing
// surrounding whitespace and a trailing newline.
func readTokenFile(name string, stdin io.Reader) (string, error) {
	var b []byte
	var err error
	if name == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, 64<<10))
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return "", &apiError{Code: "token_file", Detail: err.Error()}
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", &apiError{Code: "token_file", Detail: fmt.Sprintf("%s is empty", displayName(name))}
	}
	if strings.ContainsAny(t, " \t\r\n") {
		return "", &apiError{Code: "token_file", Detail: fmt.Sprintf("%s holds more than one word", displayName(name))}
	}
	return t, nil
}

func displayName(name string) string {
	if name == "-" {
		return "standard input"
	}
	return name
}

// do sends a request with the services' client (api/client), the one
// HTTP implementation keyledger ships, and returns the response body. A
// non-2xx answer becomes an *apiError from its problem document. in, when
// not nil, is sent as JSON; out, when not nil, receives the decoded body.
func (c *client) do(ctx context.Context, method, path string, query url.Values, in, out any) ([]byte, error) {
	raw, err := c.api.Do(ctx, method, path, query, in, out)
	var ae *apiclient.Error
	if errors.As(err, &ae) {
		return nil, &apiError{Status: ae.Status, Code: ae.Code, Detail: ae.Detail}
	}
	return raw, err
}

// unwrapURLError drops url.Error's repetition of the method and URL when
// the underlying error already says what went wrong.
func unwrapURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Sprintf("%s %s: %v", strings.ToUpper(ue.Op), ue.URL, ue.Err)
	}
	return err.Error()
}

// problemError decodes an RFC 9457 problem of a streamed answer the way the
// services' client does.
func problemError(resp *http.Response, raw []byte) error {
	e := apiclient.ProblemError(resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	return &apiError{Status: e.Status, Code: e.Code, Detail: e.Detail}
}

// printJSON writes the server's JSON as it came, ending in a newline.
func (g *globals) printJSON(raw []byte) error {
	raw = bytes.TrimRight(raw, "\n")
	_, err := fmt.Fprintf(g.stdout, "%s\n", raw)
	return err
}

// warnShownOnce is printed to stderr with every token the server returns.
func (g *globals) warnShownOnce() {
	fmt.Fprintln(g.stderr, "keyledger: warning: the token below is shown only this once and cannot be recovered; store it securely now")
}

// cleanText applies domain's text rule (see domain.CleanText) to a flag's
// value before it is sent: what the server would refuse is refused here
// with the same words, and what is sent is what will be stored.
func cleanText(fs *flag.FlagSet, v *string, clean func(string) (string, error)) error {
	c, err := clean(*v)
	if err != nil {
		return usageError{"usage: " + fs.Name() + ": " + domain.ErrorMessage(err)}
	}
	*v = c
	return nil
}
