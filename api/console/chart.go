package console

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// chart is a key's verifications per hour by outcome over the last 7
// days, drawn as stacked bars in inline SVG (no script, no library).
type chart struct {
	Bars    []bar
	Legend  []legend
	Total   int
	Max     int
	Width   int
	Height  int
	From    time.Time
	To      time.Time
	Summary string
}

type bar struct {
	X     int
	Hour  time.Time
	Parts []part
}

type part struct {
	Y, H    int
	Color   string
	Outcome string
	N       int
}

type legend struct {
	Outcome, Color string
	N              int
}

var outcomeColors = map[string]string{
	"VALID": "#2f855a", "INVALID_SECRET": "#c53030", "REVOKED": "#6b46c1", "DISABLED": "#b7791f",
	"EXPIRED": "#718096", "IP_NOT_ALLOWED": "#dd6b20", "INSUFFICIENT_PERMISSIONS": "#d53f8c",
	"NOT_FOUND": "#2b6cb0", "MALFORMED": "#4a5568",
}

// lines is a ResponseWriter that hands each line of a streamed body to fn,
// so an NDJSON export is read without holding it whole.
type lines struct {
	header http.Header
	status int
	buf    []byte
	fn     func([]byte)
}

func (l *lines) Header() http.Header { return l.header }
func (l *lines) WriteHeader(c int) {
	if l.status == 0 {
		l.status = c
	}
}
func (l *lines) Write(p []byte) (int, error) {
	l.WriteHeader(http.StatusOK)
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		if l.status < 400 {
			l.fn(l.buf[:i])
		}
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (c *Console) usageChart(r *http.Request, s *session, keyID string) (*chart, error) {
	to := c.cfg.Now().UTC().Truncate(time.Hour).Add(time.Hour)
	from := to.Add(-7 * 24 * time.Hour)
	counts := map[int]map[string]int{}
	seen := map[string]int{}
	v := url.Values{"key_id": {keyID}, "action": {"used,denied"}, "from": {from.Format(time.RFC3339)}, "format": {"ndjson"}}
	req, err := c.apiRequest(r, s, "GET", "/v1/logs?"+v.Encode(), nil)
	if err != nil {
		return nil, err
	}
	var firstErr []byte
	lw := &lines{header: http.Header{}, fn: func(b []byte) {
		var e struct {
			Time    time.Time `json:"time"`
			Outcome string    `json:"outcome"`
		}
		if json.Unmarshal(b, &e) != nil {
			return
		}
		h := int(e.Time.Sub(from) / time.Hour)
		if h < 0 || h >= 7*24 {
			return
		}
		if counts[h] == nil {
			counts[h] = map[string]int{}
		}
		counts[h][e.Outcome]++
		seen[e.Outcome]++
	}}
	c.cfg.API.ServeHTTP(lw, req)
	if lw.status >= 400 {
		firstErr = lw.buf
		ae := &apiError{Status: lw.status}
		_ = json.Unmarshal(firstErr, ae)
		return nil, ae
	}
	ch := &chart{Width: 7 * 24 * 5, Height: 120, From: from, To: to}
	outs := make([]string, 0, len(seen))
	for o, n := range seen {
		outs = append(outs, o)
		ch.Total += n
	}
	// VALID first, then the denials by how often they happened.
	slices.SortFunc(outs, func(a, b string) int {
		if a == "VALID" || b == "VALID" {
			if a == b {
				return 0
			}
			if a == "VALID" {
				return -1
			}
			return 1
		}
		return seen[b] - seen[a]
	})
	for _, o := range outs {
		col, ok := outcomeColors[o]
		if !ok {
			col = "#4a5568"
		}
		ch.Legend = append(ch.Legend, legend{Outcome: o, Color: col, N: seen[o]})
	}
	for _, m := range counts {
		t := 0
		for _, n := range m {
			t += n
		}
		ch.Max = max(ch.Max, t)
	}
	for h := 0; h < 7*24; h++ {
		m := counts[h]
		if len(m) == 0 {
			continue
		}
		b := bar{X: h * 5, Hour: from.Add(time.Duration(h) * time.Hour)}
		y := ch.Height
		for _, lg := range ch.Legend {
			n := m[lg.Outcome]
			if n == 0 {
				continue
			}
			ph := max(1, n*ch.Height/ch.Max)
			y -= ph
			b.Parts = append(b.Parts, part{Y: y, H: ph, Color: lg.Color, Outcome: lg.Outcome, N: n})
		}
		ch.Bars = append(ch.Bars, b)
	}
	return ch, nil
}
