package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	amconfig "github.com/prometheus/alertmanager/config"
	"github.com/prometheus/alertmanager/dispatch"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// The monitoring files of deploy/ and docker-compose.yml, read from the
// repository root; these tests start no node.
const (
	deployAlerts     = "deploy/prometheus/alerts.yml"
	deployPrometheus = "deploy/prometheus/prometheus.yml"
	deployDashboard  = "deploy/grafana/dashboards/keyledger.json"
	deployDatasource = "deploy/grafana/provisioning/datasources/prometheus.yml"
	deployProvider   = "deploy/grafana/provisioning/dashboards/keyledger.yml"
	deployCompose    = "docker-compose.yml"
	deployAlertmgr   = "deploy/alertmanager/alertmanager.yml"
)

// metricRef finds the metric names a PromQL expression (or an annotation
// that points at one) references.
var metricRef = regexp.MustCompile(`\b(?:keyledger|process|go)_[a-z_]+\b`)

func readRepoFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", filepath.FromSlash(path)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeYAML(t *testing.T, path string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(readRepoFile(t, path), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// exposedFamilies are the metric families a node exposes: the ones the
// fault suite checks, and the webhook families health.go declares (only a
// node run with --webhook has them).
func exposedFamilies(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{}
	for _, name := range append(slices.Clone(operatorMetrics), servedMetrics...) {
		known[name] = true
	}
	src, err := os.ReadFile("health.go")
	if err != nil {
		t.Fatal(err)
	}
	hooks := regexp.MustCompile(`"(keyledger_webhook_[a-z_]+)"`).FindAllStringSubmatch(string(src), -1)
	if len(hooks) == 0 {
		t.Fatal("health.go declares no keyledger_webhook_ family")
	}
	for _, m := range hooks {
		known[m[1]] = true
	}
	return known
}

// checkReferences fails for every metric name in texts that no node
// exposes, a histogram's _bucket, _sum and _count series standing for its
// family; it returns the families referenced.
func checkReferences(t *testing.T, file string, texts []string) map[string]bool {
	t.Helper()
	known := exposedFamilies(t)
	seen := map[string]bool{}
	for _, text := range texts {
		for _, name := range metricRef.FindAllString(text, -1) {
			family := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if !known[family] && strings.HasSuffix(family, suffix) {
					family = strings.TrimSuffix(family, suffix)
				}
			}
			if !known[family] {
				t.Errorf("%s references %s, which keyledger does not expose (in %q)", file, name, text)
				continue
			}
			seen[family] = true
		}
	}
	return seen
}

type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestDeployAlertRules(t *testing.T) {
	var rules alertRules
	decodeYAML(t, deployAlerts, &rules)
	if len(rules.Groups) == 0 {
		t.Fatalf("%s has no rule group", deployAlerts)
	}
	var texts []string
	names := map[string]bool{}
	severity := map[string]string{}
	for _, g := range rules.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("%s: group %q is unnamed or empty", deployAlerts, g.Name)
		}
		for _, r := range g.Rules {
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: rule %q without an alert name or expression", deployAlerts, r.Alert)
			}
			if names[r.Alert] {
				t.Errorf("%s: alert %s twice", deployAlerts, r.Alert)
			}
			names[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: alert %s has severity %q, want critical or warning", deployAlerts, r.Alert, s)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("%s: alert %s has no summary", deployAlerts, r.Alert)
			}
			for _, m := range metricRef.FindAllString(r.Expr, -1) {
				severity[m] = r.Labels["severity"]
			}
			texts = append(texts, r.Expr)
			for _, a := range r.Annotations {
				texts = append(texts, a)
			}
		}
	}
	seen := checkReferences(t, deployAlerts, texts)
	// Each condition an operator is paged or warned for has a rule.
	for _, want := range []string{
		"keyledger_audit_sink_lag", "keyledger_clickhouse_up", "keyledger_forged_events_total",
		"keyledger_append_failures_total", "keyledger_usage_publish_failures_total",
		"keyledger_verification_duration_seconds", "keyledger_usage_buffer_depth", "keyledger_webhook_pending",
	} {
		if !seen[want] {
			t.Errorf("%s has no rule on %s", deployAlerts, want)
		}
	}
	if severity["keyledger_forged_events_total"] != "critical" {
		t.Errorf("%s: forged events must page (severity critical)", deployAlerts)
	}
	if !strings.Contains(string(readRepoFile(t, deployAlerts)), `up{job="keyledger"} == 0`) {
		t.Errorf("%s has no rule for a node that does not answer its scrape", deployAlerts)
	}
}

type grafanaPanel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func TestDeployDashboard(t *testing.T) {
	var dash struct {
		UID    string         `json:"uid"`
		Title  string         `json:"title"`
		Panels []grafanaPanel `json:"panels"`
	}
	if err := json.Unmarshal(readRepoFile(t, deployDashboard), &dash); err != nil {
		t.Fatalf("%s: %v", deployDashboard, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: no uid or title", deployDashboard)
	}
	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	decodeYAML(t, deployDatasource, &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("%s: want one prometheus datasource at http://prometheus:9090, got %+v", deployDatasource, ds.Datasources)
	}
	uid := ds.Datasources[0].UID

	var texts []string
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Title == "" || len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no title or no query", deployDashboard, p.Title)
			}
			if p.Datasource == nil || p.Datasource.UID != uid {
				t.Errorf("%s: panel %q does not query the provisioned datasource %s", deployDashboard, p.Title, uid)
			}
			for _, q := range p.Targets {
				if strings.TrimSpace(q.Expr) == "" {
					t.Errorf("%s: panel %q has an empty query", deployDashboard, p.Title)
				}
				texts = append(texts, q.Expr)
			}
		}
	}
	walk(dash.Panels)
	seen := checkReferences(t, deployDashboard, texts)
	for _, want := range []string{
		"keyledger_verifications_total", "keyledger_verification_duration_seconds", "keyledger_http_request_duration_seconds",
		"keyledger_audit_sink_lag", "keyledger_clickhouse_up", "keyledger_forged_events_total",
		"keyledger_append_failures_total", "keyledger_usage_publish_failures_total",
		"process_cpu_seconds_total", "process_resident_memory_bytes",
	} {
		if !seen[want] {
			t.Errorf("%s has no panel on %s", deployDashboard, want)
		}
	}

	var provider struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	decodeYAML(t, deployProvider, &provider)
	if len(provider.Providers) != 1 || provider.Providers[0].Options.Path != "/var/lib/grafana/dashboards" {
		t.Errorf("%s: want one provider reading /var/lib/grafana/dashboards, got %+v", deployProvider, provider.Providers)
	}
}

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
	} `yaml:"services"`
}

// TestDeployPrometheus checks that Prometheus scrapes every keyledger node
// of the compose stack at its HTTP port and loads the alert rules, and that
// the monitoring services mount the files and listen on loopback only.
func TestDeployPrometheus(t *testing.T) {
	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, deployPrometheus, &prom)
	var compose composeFile
	decodeYAML(t, deployCompose, &compose)

	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		if sc.JobName != "keyledger" {
			continue
		}
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("%s: metrics_path %q", deployPrometheus, sc.MetricsPath)
		}
		for _, s := range sc.StaticConfigs {
			targets = append(targets, s.Targets...)
		}
	}
	var nodes []string
	for name, svc := range compose.Services {
		addr, ok := svc.Environment["KEYLEDGER_HTTP_ADDR"]
		if !ok {
			continue
		}
		_, port, _ := strings.Cut(addr, ":")
		nodes = append(nodes, name+":"+port)
	}
	slices.Sort(targets)
	slices.Sort(nodes)
	if len(nodes) < 2 || !slices.Equal(targets, nodes) {
		t.Errorf("%s scrapes %v; the keyledger nodes of %s listen at %v", deployPrometheus, targets, deployCompose, nodes)
	}

	mounts := map[string][]string{
		"prometheus":   {"./" + deployPrometheus + ":/etc/prometheus/prometheus.yml:ro", "./" + deployAlerts + ":/etc/prometheus/alerts.yml:ro"},
		"grafana":      {"./deploy/grafana/provisioning:/etc/grafana/provisioning:ro", "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"},
		"alertmanager": {"./" + deployAlertmgr + ":/etc/alertmanager/alertmanager.yml:ro"},
	}
	if !slices.Contains(prom.RuleFiles, "/etc/prometheus/alerts.yml") {
		t.Errorf("%s: rule_files %v does not load the mounted alerts.yml", deployPrometheus, prom.RuleFiles)
	}
	for name, want := range mounts {
		svc, ok := compose.Services[name]
		if !ok {
			t.Errorf("%s has no %s service", deployCompose, name)
			continue
		}
		if _, tag, ok := strings.Cut(svc.Image, ":"); !ok || tag == "" || tag == "latest" {
			t.Errorf("%s: %s image %q has no pinned tag", deployCompose, name, svc.Image)
		}
		for _, m := range want {
			if !slices.Contains(svc.Volumes, m) {
				t.Errorf("%s: %s does not mount %s", deployCompose, name, m)
			}
		}
		if len(svc.Ports) == 0 {
			t.Errorf("%s: %s publishes no port", deployCompose, name)
		}
		for _, p := range svc.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s: %s publishes %s beyond the loopback interface", deployCompose, name, p)
			}
		}
	}
}

// TestDeployAlertmanager loads the Alertmanager configuration with
// Alertmanager's own parser (which refuses a route naming an undefined
// receiver), routes every alert of the rules through its routing tree as
// Prometheus would send it, and checks that each reaches a receiver that
// posts it to a webhook, that Prometheus sends its alerts to the compose
// stack's Alertmanager, and that the service runs the parser's version
// with the file mounted.
func TestDeployAlertmanager(t *testing.T) {
	cfg, err := amconfig.Load(string(readRepoFile(t, deployAlertmgr)))
	if err != nil {
		t.Fatalf("%s: %v", deployAlertmgr, err)
	}
	webhooks := map[string][]string{}
	for _, r := range cfg.Receivers {
		for _, w := range r.WebhookConfigs {
			if u := string(w.URL) + w.URLFile; u != "" {
				webhooks[r.Name] = append(webhooks[r.Name], u)
			}
		}
	}
	root := dispatch.NewRoute(cfg.Route, nil)
	var rules alertRules
	decodeYAML(t, deployAlerts, &rules)
	routed := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			lset := model.LabelSet{"alertname": model.LabelValue(r.Alert), "instance": "keyledger-1:8080", "job": "keyledger"}
			for k, v := range r.Labels {
				lset[model.LabelName(k)] = model.LabelValue(v)
			}
			matched := root.Match(lset)
			if len(matched) == 0 {
				t.Errorf("%s: alert %s reaches no route", deployAlertmgr, r.Alert)
				continue
			}
			for _, m := range matched {
				if m == root {
					t.Errorf("%s: alert %s falls through to the default route; route keyledger's alerts", deployAlertmgr, r.Alert)
				}
				if len(webhooks[m.RouteOpts.Receiver]) == 0 {
					t.Errorf("%s: alert %s goes to receiver %q, which posts to no webhook", deployAlertmgr, r.Alert, m.RouteOpts.Receiver)
				}
				if r.Labels["severity"] == "critical" && m.RouteOpts.RepeatInterval > 4*time.Hour {
					t.Errorf("%s: critical alert %s repeats only every %s", deployAlertmgr, r.Alert, m.RouteOpts.RepeatInterval)
				}
			}
			routed++
		}
	}
	if routed == 0 {
		t.Fatalf("%s has no alert to route", deployAlerts)
	}

	var prom struct {
		Alerting struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
	}
	decodeYAML(t, deployPrometheus, &prom)
	var targets []string
	for _, am := range prom.Alerting.Alertmanagers {
		for _, sc := range am.StaticConfigs {
			targets = append(targets, sc.Targets...)
		}
	}
	if !slices.Equal(targets, []string{"alertmanager:9093"}) {
		t.Errorf("%s sends alerts to %v, want the compose stack's alertmanager:9093", deployPrometheus, targets)
	}
	var compose struct {
		Services map[string]struct {
			Image     string   `yaml:"image"`
			Command   []string `yaml:"command"`
			DependsOn []string `yaml:"depends_on"`
		} `yaml:"services"`
	}
	decodeYAML(t, deployCompose, &compose)
	am, ok := compose.Services["alertmanager"]
	if !ok {
		t.Fatalf("%s has no alertmanager service", deployCompose)
	}
	if !slices.Contains(am.Command, "--config.file=/etc/alertmanager/alertmanager.yml") {
		t.Errorf("%s: alertmanager does not load the mounted configuration: %v", deployCompose, am.Command)
	}
	// The image runs the version whose parser this test uses.
	if want := "prom/alertmanager:" + alertmanagerVersion(t); am.Image != want {
		t.Errorf("%s: alertmanager image %q, want %q (the version go.mod parses its configuration with)", deployCompose, am.Image, want)
	}
	if !slices.Contains(compose.Services["prometheus"].DependsOn, "alertmanager") {
		t.Errorf("%s: prometheus does not depend on alertmanager", deployCompose)
	}
}

// alertmanagerVersion is the Alertmanager module version go.mod requires.
func alertmanagerVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*github\.com/prometheus/alertmanager (v[0-9.]+)`).FindSubmatch(readRepoFile(t, "go.mod"))
	if m == nil {
		t.Fatal("go.mod does not require github.com/prometheus/alertmanager")
	}
	return string(m[1])
}
