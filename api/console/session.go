package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"sync"
	"time"
)

const (
	sessionCookie = "keyledger_session"
	loginCookie   = "keyledger_login"
	csrfField     = "_csrf"
)

// session is one signed-in browser. The token never leaves this node.
type session struct {
	id, csrf string
	token    string
	me       me
	created  time.Time
	seen     time.Time
	// alertsSeen is when the alerts page was last opened: the badge
	// counts critical alerts raised since.
	alertsSeen time.Time
	flash      flash
}

type flash struct {
	Kind, Text string
}

// sessions lives in this node's memory: a restart signs everybody out,
// which is the safe way for a ledger's console to fail.
type sessions struct {
	mu        sync.Mutex
	m         map[string]*session
	now       func() time.Time
	idle, max time.Duration
}

func newSessions(now func() time.Time, idle, max time.Duration) *sessions {
	return &sessions{m: map[string]*session{}, now: now, idle: idle, max: max}
}

func randomID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (ss *sessions) create(token string, m me) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.now()
	for id, s := range ss.m {
		if ss.expired(s, now) {
			delete(ss.m, id)
		}
	}
	s := &session{id: randomID(), csrf: randomID(), token: token, me: m, created: now, seen: now}
	ss.m[s.id] = s
	return s
}

func (ss *sessions) expired(s *session, now time.Time) bool {
	return now.Sub(s.seen) > ss.idle || now.Sub(s.created) > ss.max
}

// get returns a copy of the live session with id, touching it.
func (ss *sessions) get(id string) (*session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[id]
	if !ok {
		return nil, false
	}
	now := ss.now()
	if ss.expired(s, now) {
		delete(ss.m, id)
		return nil, false
	}
	s.seen = now
	cp := *s
	return &cp, true
}

func (ss *sessions) update(id string, fn func(*session)) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s, ok := ss.m[id]; ok {
		fn(s)
	}
}

// popFlash returns and clears the session's message.
func (ss *sessions) popFlash(id string) flash {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[id]
	if !ok {
		return flash{}
	}
	f := s.flash
	s.flash = flash{}
	return f
}

func (ss *sessions) end(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

// secure reports whether the browser reached us over TLS.
func (c *Console) secure(r *http.Request) bool {
	return r.TLS != nil || (c.cfg.TrustProxy && r.Header.Get("X-Forwarded-Proto") == "https")
}

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value, path string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, Secure: c.secure(r), SameSite: http.SameSiteStrictMode,
	})
}

// sameOrigin refuses a state-changing request that a browser says comes
// from another site. The CSRF token is the main guard; this one costs
// nothing.
func sameOrigin(r *http.Request) bool {
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func tokenEqual(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

type handler func(w http.ResponseWriter, r *http.Request, s *session)

// signedIn runs h with the request's session, sending a browser without
// one to the sign-in page. Every request but GET must carry the session's
// CSRF token and come from this origin.
func (c *Console) signedIn(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		var s *session
		if ck, err := r.Cookie(sessionCookie); err == nil {
			s, _ = c.sessions.get(ck.Value)
		}
		if s == nil {
			if r.Method != http.MethodGet {
				http.Error(w, "your session has ended; sign in again", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, query("/login", "next", r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if r.Method != http.MethodGet && (!sameOrigin(r) || !tokenEqual(r.PostFormValue(csrfField), s.csrf)) {
			c.log.WarnContext(r.Context(), "console: refused a request without a valid CSRF token", "path", r.URL.Path, "principal", s.me.Principal.ID)
			http.Error(w, "this form has expired or did not come from the console; reload the page and try again", http.StatusForbidden)
			return
		}
		h(w, r, s)
	}
}
