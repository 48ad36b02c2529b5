package eventstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// The NATS identities of a keyledger deployment. Each has credentials of
// its own and only the permissions its job needs (see IdentityPermissions),
// so a leaked verifier credential cannot rewrite the ledger.
const (
	// IdentityNode is a keyledger node: it owns the streams and the
	// snapshot bucket.
	IdentityNode = "keyledger"
	// IdentityVerifier is a service that verifies keys from its own
	// replica of KEYS and publishes its usage events.
	IdentityVerifier = "verifier"
	// IdentityAlerts is an alerting pipeline: it reads ALERTS.
	IdentityAlerts = "alerts"
	// IdentityAuditor is a reviewer or `keyledger audit verify`: it reads
	// every stream and writes nothing.
	IdentityAuditor = "auditor"
)

// Identities lists the deployment's identities, the node first.
func Identities() []string {
	return []string{IdentityNode, IdentityVerifier, IdentityAlerts, IdentityAuditor}
}

// InboxPrefix is the prefix of identity's reply subjects. Each identity may
// subscribe to its own inboxes only, so none can read the replies (stream
// messages, API answers) meant for another; its clients must use this
// prefix (nats.CustomInboxPrefix, which ConnectOptions sets).
func InboxPrefix(identity string) string { return "_INBOX." + identity }

// Permissions are the subjects one identity may publish and subscribe to;
// everything else is denied.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// snapshotStream is the stream behind the snapshot bucket.
const snapshotStream = "OBJ_" + snapshotBucket

// NotaryBucket is the key-value bucket where the notary keeps its tiles,
// event index and saved state (projections/notary.Bucket names the same),
// and notaryStream the stream behind it.
const (
	NotaryBucket = "KEYLEDGER_NOTARY"
	notaryStream = "KV_" + NotaryBucket
)

// ledgerStreams are the streams of events, in a fixed order.
var ledgerStreams = []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts, domain.StreamCheckpoints}

// IdentityPermissions returns what identity may do; false for an unknown
// identity. deploy/nats.conf grants the same (a test holds them equal).
//
// Readers get what reading a stream through the JetStream API takes:
// stream info, message and direct gets, and creating consumers to read with
// (ordered or ephemeral, acknowledging nothing). They may not delete
// consumers or acknowledge messages, which would let them meddle with the
// node's durable consumers.
func IdentityPermissions(identity string) (Permissions, bool) {
	var p Permissions
	switch identity {
	case IdentityNode:
		p.Publish = []string{"keyledger.>", "$O." + snapshotBucket + ".>", "$KV." + NotaryBucket + ".>", "$JS.API.INFO"}
		for _, st := range append(slices.Clone(ledgerStreams), snapshotStream, notaryStream) {
			p.Publish = append(p.Publish, ownStream(st)...)
		}
		// Saving a snapshot replaces the previous one, which purges its
		// chunks; the ledger streams deny purges in their own settings.
		p.Publish = append(p.Publish, "$JS.API.STREAM.PURGE."+snapshotStream)
	case IdentityVerifier:
		p.Publish = []string{"keyledger.usage.*.used", "keyledger.usage.*.denied", domain.PackSubject}
		p.Publish = append(p.Publish, readStream(domain.StreamKeys)...)
		p.Subscribe = streamSubjects[domain.StreamKeys]
	case IdentityAlerts:
		p.Publish = readStream(domain.StreamAlerts)
		p.Subscribe = streamSubjects[domain.StreamAlerts]
	case IdentityAuditor:
		p.Publish = []string{"$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"}
		for _, st := range append(slices.Clone(ledgerStreams), snapshotStream) {
			p.Publish = append(p.Publish, readStream(st)...)
		}
		p.Subscribe = []string{"keyledger.>"}
	default:
		return Permissions{}, false
	}
	p.Subscribe = append(slices.Clone(p.Subscribe), InboxPrefix(identity)+".>")
	return p, true
}

// readStream is the JetStream API of reading stream.
func readStream(stream string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.STREAM.MSG.GET." + stream,
		"$JS.API.DIRECT.GET." + stream,
		"$JS.API.DIRECT.GET." + stream + ".>",
		"$JS.API.CONSUMER.CREATE." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".*",
		// Flow control replies of push consumers (object store reads).
		"$JS.FC." + stream + ".>",
	}
}

// ownStream is the JetStream API the node uses on a stream it owns: all but
// deleting the stream, purging it and deleting messages.
func ownStream(stream string) []string {
	return []string{
		"$JS.API.STREAM.CREATE." + stream,
		"$JS.API.STREAM.UPDATE." + stream,
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.STREAM.MSG.GET." + stream,
		"$JS.API.DIRECT.GET." + stream,
		"$JS.API.DIRECT.GET." + stream + ".>",
		// CONSUMER.CREATE.<stream> (legacy), .NAMES and .LIST.
		"$JS.API.CONSUMER.*." + stream,
		// CONSUMER.CREATE, INFO, DELETE, PAUSE... .<stream>.<consumer>.
		"$JS.API.CONSUMER.*." + stream + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".*",
		"$JS.ACK." + stream + ".>",
		"$JS.FC." + stream + ".>",
	}
}

// serverPermissions converts p for the server's options.
func serverPermissions(p Permissions) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: slices.Clone(p.Publish)},
		Subscribe: &server.SubjectPermission{Allow: slices.Clone(p.Subscribe)},
	}
}

// credentialsDir is where the embedded server keeps its identities' seeds.
func credentialsDir(dataDir string) string { return filepath.Join(dataDir, "credentials") }

// SeedFile is the nkey seed file of identity among the embedded server's
// credentials in dir (Store.CredentialsDir).
func SeedFile(dir, identity string) string { return filepath.Join(dir, identity+".nk") }

// credentials are the embedded server's identities: their key pairs, by
// identity name.
type credentials map[string]nkeys.KeyPair

// loadOrCreateCredentials reads the seed of every identity from dir,
// creating those missing with mode 0600, so a restart keeps the same
// credentials. A seed file that others may read is refused rather than
// used.
func loadOrCreateCredentials(dir string) (credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	creds := credentials{}
	for _, id := range Identities() {
		kp, err := loadOrCreateSeed(SeedFile(dir, id), id)
		if err != nil {
			return nil, fmt.Errorf("nats credentials %s: %w", id, err)
		}
		creds[id] = kp
	}
	return creds, nil
}

func loadOrCreateSeed(path, identity string) (nkeys.KeyPair, error) {
	fi, err := os.Stat(path)
	if err == nil {
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s has mode %v: others may read it; make it 0600", path, fi.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		kp, err := nkeys.ParseDecoratedNKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return kp, nil
	}
	if !os.IsNotExist(err) {
		return nil, err
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# keyledger NATS identity %q, public key %s.\n", identity, pub)
	fmt.Fprintf(&b, "# Give this file only to what acts as %s; keep it 0600.\n", identity)
	fmt.Fprintf(&b, "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n", seed)
	// Written beside its final name and renamed, so a crash never leaves
	// half a seed behind.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".seed-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, err
	}
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	return kp, nil
}

// nkeyUsers are the server's users for creds, each with its identity's
// permissions.
func (c credentials) nkeyUsers() ([]*server.NkeyUser, error) {
	var users []*server.NkeyUser
	for _, id := range Identities() {
		pub, err := c[id].PublicKey()
		if err != nil {
			return nil, err
		}
		p, _ := IdentityPermissions(id)
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: serverPermissions(p)})
	}
	return users, nil
}
