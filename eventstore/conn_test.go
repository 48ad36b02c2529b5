package eventstore_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestConnectTLSAndPassword opens a store on an external server that asks
// for TLS with a client certificate and a user and password, through the
// Config options alone.
func TestConnectTLSAndPassword(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir)
	serverCert, serverKey := ca.issue(t, dir, "server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, dir, "client", x509.ExtKeyUsageClientAuth)

	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: serverCert, KeyFile: serverKey, CaFile: ca.file, Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	perms, _ := eventstore.IdentityPermissions(eventstore.IdentityNode)
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		NoSigs: true, NoLog: true, TLSConfig: tc, TLSVerify: true, TLSTimeout: 5,
		Users: []*server.User{{Username: "node", Password: "s3cret", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: perms.Publish},
			Subscribe: &server.SubjectPermission{Allow: perms.Subscribe},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	url := ns.ClientURL()
	cfg := eventstore.Config{
		URL: url, User: "node", Password: "s3cret",
		TLSCAFile: ca.file, TLSCertFile: clientCert, TLSKeyFile: clientKey,
	}
	s := MustOpenStore(t, func(c *eventstore.Config) {
		c.URL, c.User, c.Password = cfg.URL, cfg.User, cfg.Password
		c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile
	})
	k := newKeyID()
	mustAppend(t, s, 0, created(t, k))

	nc, err := eventstore.Dial(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if !nc.TLSRequired() {
		t.Errorf("connection without TLS")
	}
	nc.Close()

	// Each part is needed.
	for name, c := range map[string]eventstore.Config{
		"no client certificate": {URL: url, User: "node", Password: "s3cret", TLSCAFile: ca.file},
		"no TLS":                {URL: url, User: "node", Password: "s3cret"},
	} {
		if nc, err := eventstore.Dial(testCtx(t), c); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		}
	}
	if _, err := eventstore.Dial(testCtx(t), eventstore.Config{URL: url, User: "node", Password: "guess",
		TLSCAFile: ca.file, TLSCertFile: clientCert, TLSKeyFile: clientKey}); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("wrong password: %v, want %v", err, nats.ErrAuthorization)
	}
}

func TestConnectOptionsRefusesContradictions(t *testing.T) {
	for name, c := range map[string]eventstore.Config{
		"creds and nkey":          {CredsFile: "a.creds", NkeySeedFile: "b.nk"},
		"creds and user":          {CredsFile: "a.creds", User: "u", Password: "p"},
		"password without user":   {Password: "p"},
		"certificate without key": {TLSCertFile: "c.pem"},
		"key without certificate": {TLSKeyFile: "k.pem"},
		"unknown identity":        {Identity: "root"},
		"unreadable seed":         {NkeySeedFile: filepath.Join(t.TempDir(), "missing.nk")},
	} {
		if _, err := eventstore.ConnectOptions(c); domain.ErrorCode(err) != domain.EINVALID {
			t.Errorf("%s: %v, want %s", name, err, domain.EINVALID)
		}
	}
	if _, err := eventstore.Dial(testCtx(t), eventstore.Config{}); domain.ErrorCode(err) != domain.EINVALID {
		t.Errorf("dial without url: %v, want %s", err, domain.EINVALID)
	}
	if _, err := eventstore.Open(testCtx(t), eventstore.Config{URL: "nats://127.0.0.1:1", Listen: "127.0.0.1:0"}); domain.ErrorCode(err) != domain.EINVALID {
		t.Errorf("open with an external url and a listener: %v, want %s", err, domain.EINVALID)
	}
	if _, err := eventstore.Open(testCtx(t), eventstore.Config{DataDir: t.TempDir(), Listen: "127.0.0.1"}); domain.ErrorCode(err) != domain.EINVALID {
		t.Errorf("open with a listen address without port: %v, want %s", err, domain.EINVALID)
	}
}

// testCA issues certificates for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keyledger test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(dir, "ca.pem")
	writePEM(t, file, "CERTIFICATE", der)
	return &testCA{cert: cert, key: key, file: file}
}

// issue writes a certificate for 127.0.0.1 and its key, and returns their
// files.
func (ca *testCA) issue(t *testing.T, dir, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kb)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
