package chlog

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled is returned (wrapped) by StartLocal when no
// clickhouse-server binary can be found. Its text is what an operator needs
// to read: how to install the server, or how to do without a local one.
var ErrNotInstalled = errors.New(`clickhouse-server is not installed: ` +
	`install Debian's package with "apt-get install clickhouse-server" ` +
	`(make run and make test do it through scripts/ensure-clickhouse.sh), ` +
	`or pass --clickhouse host:port to use a running ClickHouse`)

// ServerBinaryEnv names an environment variable that overrides where the
// clickhouse-server binary is; scripts/with-clickhouse.sh sets it.
const ServerBinaryEnv = "KEYLEDGER_CLICKHOUSE_SERVER"

// localNice is the niceness the managed server runs at.
const localNice = 10

// LocalServer is a clickhouse-server child process that keyledger
// configured and owns: loopback only, data under one directory, stopped with
// the service.
type LocalServer struct {
	logger   *slog.Logger
	dir      string
	addr     string
	httpAddr string
	password string

	cmd    *exec.Cmd
	exited chan struct{}
	// waitErr is cmd.Wait's result; it is written before exited is closed.
	waitErr error

	stopOnce sync.Once
	stopErr  error
}

// FindServer returns the path of the clickhouse-server binary: the one named
// by KEYLEDGER_CLICKHOUSE_SERVER, else the one on PATH, else Debian's
// /usr/sbin/clickhouse-server, which is missing from many users' PATH.
func FindServer() (string, error) {
	if p := os.Getenv(ServerBinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", ServerBinaryEnv, p, ErrNotInstalled)
		}
		return p, nil
	}
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/clickhouse-server"
	if st, err := os.Stat(debian); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return debian, nil
	}
	return "", ErrNotInstalled
}

// StartLocal starts clickhouse-server as a child process with its
// configuration, data, temporary files and logs under
// <dataDir>/clickhouse, listening on 127.0.0.1 only, and returns once the
// server answers. The ports it used last time are reused when they are still
// free, so a restarted server is found where it was; otherwise free ports are
// picked. The returned error wraps ErrNotInstalled when there is no server to
// start. ctx bounds only the start, not the server's life: call Stop.
func StartLocal(ctx context.Context, dataDir string, logger *slog.Logger) (*LocalServer, error) {
	return startLocal(ctx, dataDir, logger, startOptions{})
}

// StartLocalFor is StartLocal with the server's one user, LocalUser,
// limited to database: it can neither read nor create any other.
func StartLocalFor(ctx context.Context, dataDir, database string, logger *slog.Logger) (*LocalServer, error) {
	return startLocal(ctx, dataDir, logger, startOptions{database: database})
}

type startOptions struct {
	// pinned is the native address a restart must listen on again.
	pinned string
	// database, when set, is the one database LocalUser may use.
	database string
}

func startLocal(ctx context.Context, dataDir string, logger *slog.Logger, o startOptions) (*LocalServer, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bin, err := FindServer()
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("clickhouse data dir: %w", err)
	}
	dir := filepath.Join(abs, "clickhouse")
	for _, sub := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o750); err != nil {
			return nil, fmt.Errorf("clickhouse data dir: %w", err)
		}
	}

	// A second server on the same directory would fail on the lock anyway,
	// but only after this start had rewritten the running one's config and
	// saved ports; settle it before touching anything. The server of a
	// keyledger that crashed is still stopping: wait for it.
	if err := awaitPreviousServer(ctx, dir, logger); err != nil {
		return nil, err
	}
	password, err := localPassword(dir)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		var tcpPort, httpPort int
		if o.pinned != "" {
			// A restart must come back where the audit log's
			// connection pool dials; waiting for the ports to be
			// free again is the supervisor's back-off.
			t, h, ok := savedPorts(dir)
			if !ok || net.JoinHostPort("127.0.0.1", strconv.Itoa(t)) != o.pinned {
				return nil, fmt.Errorf("clickhouse ports of %s are not free yet", o.pinned)
			}
			tcpPort, httpPort = t, h
		} else if tcpPort, httpPort, err = choosePorts(dir, attempt > 1); err != nil {
			return nil, err
		}
		s, err := startOnce(ctx, bin, dir, tcpPort, httpPort, password, o.database, logger)
		if err == nil {
			return s, nil
		}
		lastErr = err
		// A port taken between our check and the server's bind is the
		// one failure worth another try, on other ports.
		if ctx.Err() != nil || o.pinned != "" || !strings.Contains(err.Error(), "already in use") {
			break
		}
		logger.Warn("clickhouse port taken, trying others", "attempt", attempt, "err", err)
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, bin, dir string, tcpPort, httpPort int, password, database string, logger *slog.Logger) (*LocalServer, error) {
	if err := writeServerConfig(dir, tcpPort, httpPort, password, database); err != nil {
		return nil, err
	}
	out, err := os.OpenFile(filepath.Join(dir, "log", "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("clickhouse log: %w", err)
	}
	defer out.Close()
	// The process must outlive ctx (which bounds only the start), so it is
	// not started with exec.CommandContext.
	cmd := exec.Command(bin, "--config-file="+filepath.Join(dir, "config.xml"))
	if nice, err := exec.LookPath("nice"); err == nil {
		// The audit log trails the ledger by design (the sink batches
		// for up to a second), so its server yields the CPU to the
		// node: verifications, not inserts and merges, win a busy core.
		cmd = exec.Command(nice, "-n", strconv.Itoa(localNice), bin, "--config-file="+filepath.Join(dir, "config.xml"))
	}
	cmd.Dir = dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = childSysProcAttr()
	if err := writeOwner(dir); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &LocalServer{
		logger:   logger,
		dir:      dir,
		addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(tcpPort)),
		httpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)),
		password: password,
		cmd:      cmd,
		exited:   make(chan struct{}),
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx); err != nil {
		_ = s.Stop()
		return nil, err
	}
	logger.Info("clickhouse started", "addr", s.addr, "http", s.httpAddr, "dir", dir, "pid", cmd.Process.Pid)
	return s, nil
}

// waitReady polls the HTTP /ping endpoint, which answers only once the
// server has loaded its metadata and opened every listener.
func (s *LocalServer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// No keep-alive: ClickHouse waits for open connections when it shuts
	// down, and an idle one left in a shared pool would hold up Stop.
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + s.httpAddr + "/ping"
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("clickhouse ping: %w", err)
		}
		if resp, err := client.Do(req); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.HasPrefix(body, []byte("Ok.")) {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("clickhouse-server exited during start (%v): %s", s.waitErr, s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("clickhouse-server did not answer on %s: %w; %s", s.httpAddr, ctx.Err(), s.logTail())
		case <-tick.C:
		}
	}
}

// logTail returns the last lines the server wrote about errors, for error
// messages that say why it did not start.
func (s *LocalServer) logTail() string {
	var parts []string
	for _, name := range []string{"clickhouse-server.err.log", "stdout.log"} {
		b, err := os.ReadFile(filepath.Join(s.dir, "log", name))
		if err != nil || len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		// Keep only the lines that say something: 18.16 follows every
		// error with a long stack trace of numbered frames.
		var kept []string
		for _, l := range lines {
			if t := strings.TrimSpace(l); t == "" || (t[0] >= '0' && t[0] <= '9' && strings.Contains(t, ". /")) {
				continue
			}
			kept = append(kept, l)
		}
		if len(kept) > 5 {
			kept = kept[len(kept)-5:]
		}
		parts = append(parts, name+": "+strings.Join(kept, " | "))
	}
	if len(parts) == 0 {
		return "no server log"
	}
	return strings.Join(parts, "; ")
}

// Addr returns host:port of the server's native protocol.
func (s *LocalServer) Addr() string { return s.addr }

// HTTPAddr returns host:port of the server's HTTP interface.
func (s *LocalServer) HTTPAddr() string { return s.httpAddr }

// User returns the server's one user, LocalUser; Password its password.
func (s *LocalServer) User() string     { return LocalUser }
func (s *LocalServer) Password() string { return s.password }

// PID returns the server's process id.
func (s *LocalServer) PID() int { return s.cmd.Process.Pid }

// Dir returns the directory that holds the server's configuration and data.
func (s *LocalServer) Dir() string { return s.dir }

// Done is closed when the server process has exited, whoever stopped it.
func (s *LocalServer) Done() <-chan struct{} { return s.exited }

// Stop asks the server to shut down (SIGTERM), waits for it, and kills it if
// it has not exited after ten seconds: ClickHouse waits for open client
// connections before it exits, and a stop must not hang on a forgotten one.
// Stop is safe to call more than once.
func (s *LocalServer) Stop() error {
	s.stopOnce.Do(func() {
		select {
		case <-s.exited:
			return
		default:
		}
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			s.stopErr = fmt.Errorf("stop clickhouse: %w", err)
		}
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			s.logger.Warn("clickhouse did not stop in time, killing it", "pid", s.cmd.Process.Pid)
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		s.logger.Info("clickhouse stopped", "addr", s.addr)
	})
	return s.stopErr
}

// choosePorts returns the ports saved by the previous start when both are
// still free (and fresh is false), or two new free ports, and saves them.
func choosePorts(dir string, fresh bool) (tcpPort, httpPort int, err error) {
	file := filepath.Join(dir, "ports")
	if !fresh {
		if t, h, ok := savedPorts(dir); ok {
			return t, h, nil
		}
	}
	if tcpPort, err = freePort(); err != nil {
		return 0, 0, err
	}
	for {
		if httpPort, err = freePort(); err != nil {
			return 0, 0, err
		}
		if httpPort != tcpPort {
			break
		}
	}
	if err := os.WriteFile(file, fmt.Appendf(nil, "%d %d\n", tcpPort, httpPort), 0o640); err != nil {
		return 0, 0, fmt.Errorf("save clickhouse ports: %w", err)
	}
	return tcpPort, httpPort, nil
}

// savedPorts returns the ports of the previous start when both are free.
func savedPorts(dir string) (tcpPort, httpPort int, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, "ports"))
	if err != nil {
		return 0, 0, false
	}
	var t, h int
	if n, _ := fmt.Sscan(string(b), &t, &h); n == 2 && portFree(t) && portFree(h) && t != h {
		return t, h, true
	}
	return 0, 0, false
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	if port <= 0 || port > 65535 {
		return false
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// writeServerConfig writes the smallest configuration that clickhouse-server
// 18.16 starts with and that a current release accepts too. 18.16 refuses to
// start without mark_cache_size; everything else has a usable default, but
// every path is set so that nothing is written outside dir (the defaults
// point into /var/lib/clickhouse). No interserver port: there is no
// replication. The server runs as whoever starts it, root included: 18.16
// does not check the user, and a current release only refuses when the data
// directory belongs to another user, which cannot happen here.
func writeServerConfig(dir string, tcpPort, httpPort int, password, database string) error {
	p := func(sub string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(filepath.Join(dir, sub)+"/"))
		return b.String()
	}
	config := fmt.Sprintf(`<?xml version="1.0"?>
<!-- Written by keyledger at every start; edits are overwritten. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>%[1]s/clickhouse-server.log</log>
        <errorlog>%[1]s/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>%[2]d</tcp_port>
    <http_port>%[3]d</http_port>
    <path>%[4]s</path>
    <tmp_path>%[5]s</tmp_path>
    <user_files_path>%[6]s</user_files_path>
    <format_schema_path>%[7]s</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>200</max_concurrent_queries>
</yandex>
`, strings.TrimSuffix(p("log"), "/"), tcpPort, httpPort, p("data"), p("tmp"), p("user_files"), p("format_schemas"))
	// The one user is keyledger's, with a generated password (only its
	// SHA-256 is in the file), from loopback only, and limited to the
	// audit log's database when one is given; there is no passwordless
	// default user. poll_interval is how often a connection waiting for
	// its client's next query checks for shutdown: 18.16 waits for every
	// open connection when it stops, and with the default of 10 seconds an
	// idle pooled connection held up every stop for that long.
	sum := sha256.Sum256([]byte(password))
	allow := ""
	if database != "" {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(database))
		allow = "\n            <allow_databases>\n                <database>" + b.String() + "</database>\n            </allow_databases>"
	}
	users := fmt.Sprintf(`<?xml version="1.0"?>
<!-- Written by keyledger at every start; edits are overwritten. -->
<yandex>
    <profiles>
        <default>
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <%[1]s>
            <password_sha256_hex>%[2]s</password_sha256_hex>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>%[3]s
        </%[1]s>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
`, LocalUser, hex.EncodeToString(sum[:]), allow)
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(config), 0o640); err != nil {
		return fmt.Errorf("write clickhouse config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), []byte(users), 0o600); err != nil {
		return fmt.Errorf("write clickhouse users: %w", err)
	}
	return nil
}

// LocalUser is the one user of a managed server.
const LocalUser = "keyledger"

// PasswordFile is where a managed server's password is kept, under its
// directory (<data-dir>/clickhouse), readable by its owner only.
const PasswordFile = "password"

// localPassword returns the managed server's password, generated on the
// first start and kept in dir/password (mode 0600).
func localPassword(dir string) (string, error) {
	path := filepath.Join(dir, PasswordFile)
	if b, err := os.ReadFile(path); err == nil {
		if p := strings.TrimSpace(string(b)); len(p) >= 32 {
			return p, nil
		}
		return "", fmt.Errorf("clickhouse password file %s is too short: remove it to have a new one generated", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("clickhouse password: %w", err)
	}
	var b [32]byte
	if _, err := cryptorand.Read(b[:]); err != nil {
		return "", fmt.Errorf("clickhouse password: %w", err)
	}
	p := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(p+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write clickhouse password: %w", err)
	}
	return p, nil
}

// Supervisor keeps a managed clickhouse-server running: when the process
// dies (a crash, the OOM killer, an operator's kill -9) it is started again
// on the same directory and the same ports, after a back-off that doubles
// from MinBackoff to MaxBackoff while restarts keep failing. ClickHouse
// recovers its own data on start (a part left half-written by the crash is
// set aside), and the events the sink could not insert meanwhile wait in
// JetStream, so nothing acknowledged is lost.
type Supervisor struct {
	dataDir  string
	database string
	logger   *slog.Logger
	addr     string

	// MinBackoff and MaxBackoff bound the wait before a restart (250ms
	// and 15s); set them before Run.
	MinBackoff, MaxBackoff time.Duration

	mu       sync.Mutex
	current  *LocalServer
	up       bool
	restarts int
	lastErr  error

	stopping     chan struct{}
	stoppingOnce sync.Once
}

// stopGrace is how long a server that exited as asked (SIGTERM, SIGINT)
// waits for keyledger to say it is stopping before it counts as a failure:
// a signal to keyledger's whole process group reaches both at once, and
// the server may be gone before keyledger's own handler has run.
const stopGrace = 5 * time.Second

// Supervise starts the local server (as StartLocal does) and returns its
// supervisor; Run keeps it running until ctx ends and then stops it.
func Supervise(ctx context.Context, dataDir string, logger *slog.Logger) (*Supervisor, error) {
	return SuperviseFor(ctx, dataDir, "", logger)
}

// SuperviseFor is Supervise of a server whose user is limited to
// database (see StartLocalFor).
func SuperviseFor(ctx context.Context, dataDir, database string, logger *slog.Logger) (*Supervisor, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	srv, err := StartLocalFor(ctx, dataDir, database, logger)
	if err != nil {
		return nil, err
	}
	return &Supervisor{dataDir: dataDir, database: database, logger: logger.With("component", "clickhouse.supervisor"), addr: srv.Addr(),
		MinBackoff: 250 * time.Millisecond, MaxBackoff: 15 * time.Second, current: srv, up: true, stopping: make(chan struct{})}, nil
}

// Stopping tells the supervisor that keyledger is shutting down. From then
// on the server exiting is expected, not a failure: a signal to the whole
// process group (systemd's KillMode=control-group, docker stop, Ctrl-C)
// reaches clickhouse-server too. It is not restarted; Run still waits for
// its ctx to end. Stopping is safe to call more than once.
func (s *Supervisor) Stopping() { s.stoppingOnce.Do(func() { close(s.stopping) }) }

// expectedExit reports whether srv's exit is part of keyledger's shutdown:
// keyledger said it is stopping (or ctx ended), or the server was asked to
// stop by a signal and keyledger says so within stopGrace.
func (s *Supervisor) expectedExit(ctx context.Context, srv *LocalServer) bool {
	select {
	case <-s.stopping:
		return true
	case <-ctx.Done():
		return true
	default:
	}
	if !askedToStop(srv.waitErr) {
		return false
	}
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-s.stopping:
		return true
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}

// askedToStop reports whether a server's exit status (cmd.Wait's error)
// is that of a server told to stop: a clean exit after SIGTERM or SIGINT,
// or death by one of those.
func askedToStop(waitErr error) bool {
	if waitErr == nil {
		return true
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT)
}

// Addr returns host:port of the native protocol; it stays the same across
// restarts.
func (s *Supervisor) Addr() string { return s.addr }

// Credentials returns the server's user and password; they stay the same
// across restarts.
func (s *Supervisor) Credentials() (user, password string) {
	srv := s.Server()
	return srv.User(), srv.Password()
}

// Server returns the process running now (or the last one, while it is
// being restarted).
func (s *Supervisor) Server() *LocalServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Up reports whether the server is running; when it is not, the error says
// since when it is being restarted and why the last start failed.
func (s *Supervisor) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up {
		return nil
	}
	if s.lastErr != nil {
		return fmt.Errorf("the local clickhouse-server is down and being restarted: %w", s.lastErr)
	}
	return errors.New("the local clickhouse-server is down and being restarted")
}

// Restarts counts how often the server was started again after it died.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// Run restarts the server whenever it exits, until ctx ends; then it stops
// the server and returns the stop's error.
func (s *Supervisor) Run(ctx context.Context) error {
	wait := s.MinBackoff
	for {
		srv := s.Server()
		ranFrom := time.Now()
		select {
		case <-ctx.Done():
			return srv.Stop()
		case <-srv.Done():
		}
		if s.expectedExit(ctx, srv) {
			s.logger.Info("the local clickhouse-server stopped with keyledger", "pid", srv.PID(), "err", srv.waitErr)
			<-ctx.Done()
			return nil
		}
		// A server that dies soon after each start is not restarted in
		// a tight loop: the back-off resets only after a good run.
		if time.Since(ranFrom) > time.Minute {
			wait = s.MinBackoff
		}
		s.mu.Lock()
		s.up = false
		s.mu.Unlock()
		s.logger.Error("the local clickhouse-server exited; restarting it", "pid", srv.PID(), "err", srv.waitErr, "log", srv.logTail())
		started := time.Now()
		for attempt := 1; ; attempt++ {
			t := time.NewTimer(wait/2 + rand.N(wait/2+1))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-s.stopping:
				t.Stop()
				<-ctx.Done()
				return nil
			case <-t.C:
			}
			next, err := startLocal(ctx, s.dataDir, s.logger, startOptions{pinned: s.addr, database: s.database})
			if err == nil {
				s.mu.Lock()
				s.current, s.up, s.lastErr = next, true, nil
				s.restarts++
				s.mu.Unlock()
				s.logger.Info("the local clickhouse-server is back", "attempts", attempt, "down_for", time.Since(started).Round(time.Millisecond).String(), "pid", next.PID())
				wait = min(2*wait, s.MaxBackoff)
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			s.mu.Lock()
			s.lastErr = err
			s.mu.Unlock()
			s.logger.Warn("restart of the local clickhouse-server failed", "attempt", attempt, "err", err)
			wait = min(2*wait, s.MaxBackoff)
		}
	}
}
