package fleetlink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/serverapi"
)

const (
	testProvKey = "provisioning-key-0123456789abcdef0123456789abcdef"
	testAppUUID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
)

// fakeServer speaks the device API of docs/api.md, and records what it is
// sent.
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server

	mu         sync.Mutex
	provKey    string
	devices    map[string]*fakeDevice
	longPoll   int           // the X-Reeve-Long-Poll value; 0: no long polls
	hold       time.Duration // how long a long poll is held at most (its "wait is up")
	ignoreETag bool          // answer 200 whatever If-None-Match says (a broken server)
	noETag     bool          // send no ETag (a poorer server)
	reportFail int           // answer reports with this status instead of 200
	stateFail  int           // answer polls with this status
	holding    int           // long polls being held
	changed    chan struct{} // closed when a target changes
	onRegister func(serverapi.RegisterRequest)
	reqs       []fakeRequest
}

type fakeDevice struct {
	key    string
	target []byte // the raw target body
	state  reeve.DeviceReport
}

type fakeRequest struct {
	Method, Path   string
	Wait           string // the wait query parameter
	IfNoneMatch    string
	Auth           string
	Status         int
	ReportedFields []string // the fields of a report, sorted
	Report         reeve.DeviceReport
	// Dependents are the report's entries for dependent devices.
	Dependents map[string]reeve.DeviceReport
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	s := &fakeServer{t: t, provKey: testProvKey, devices: map[string]*fakeDevice{},
		hold: 20 * time.Millisecond, changed: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /device/register", s.register)
	mux.HandleFunc("POST /device/v3/{uuid}/key-exchange", s.keyExchange)
	mux.HandleFunc("GET /device/v3/{uuid}/state", s.state)
	mux.HandleFunc("PATCH /device/v3/state", s.report)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *fakeServer) URL() string { return s.srv.URL }

func bearerOf(r *http.Request) string {
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// record notes a request and the status it got.
func (s *fakeServer) record(r *http.Request, status int, mod func(*fakeRequest)) {
	fr := fakeRequest{Method: r.Method, Path: r.URL.Path, Wait: r.URL.Query().Get("wait"),
		IfNoneMatch: r.Header.Get("If-None-Match"), Auth: bearerOf(r), Status: status}
	if mod != nil {
		mod(&fr)
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, fr)
	s.mu.Unlock()
}

func (s *fakeServer) fail(w http.ResponseWriter, r *http.Request, code, format string, args ...any) {
	e := reeve.Errorf(code, format, args...)
	s.record(r, httpx.StatusOf(code), nil)
	httpx.WriteError(w, nil, e)
}

func (s *fakeServer) register(w http.ResponseWriter, r *http.Request) {
	var req serverapi.RegisterRequest
	if err := httpx.DecodeJSON(w, r, serverapi.MaxBody, &req); err != nil {
		s.fail(w, r, reeve.CodeInvalid, "%v", err)
		return
	}
	s.mu.Lock()
	key, hook := s.provKey, s.onRegister
	s.mu.Unlock()
	if bearerOf(r) != key {
		s.fail(w, r, reeve.CodeUnauthorized, "unknown provisioning key")
		return
	}
	if hook != nil {
		hook(req)
	}
	if !reeve.ValidUUID(req.UUID) || len(req.APIKey) < 32 {
		s.fail(w, r, reeve.CodeInvalid, "bad uuid or api_key")
		return
	}
	s.mu.Lock()
	if _, ok := s.devices[req.UUID]; ok {
		s.mu.Unlock()
		s.fail(w, r, reeve.CodeConflict, "device %s is already registered", req.UUID)
		return
	}
	s.devices[req.UUID] = &fakeDevice{key: req.APIKey, target: emptyTarget(req.UUID)}
	s.mu.Unlock()
	s.record(r, http.StatusCreated, nil)
	httpx.WriteJSON(w, http.StatusCreated, reeve.Device{ID: 1, UUID: req.UUID, Name: req.Name, DeviceType: req.DeviceType})
}

func (s *fakeServer) keyExchange(w http.ResponseWriter, r *http.Request) {
	var req serverapi.KeyExchangeRequest
	if err := httpx.DecodeJSON(w, r, serverapi.MaxBody, &req); err != nil {
		s.fail(w, r, reeve.CodeInvalid, "%v", err)
		return
	}
	s.mu.Lock()
	d, ok := s.devices[r.PathValue("uuid")]
	okKey := bearerOf(r) == s.provKey
	if ok && okKey {
		d.key = req.APIKey
	}
	s.mu.Unlock()
	switch {
	case !okKey:
		s.fail(w, r, reeve.CodeUnauthorized, "unknown provisioning key")
	case !ok:
		s.fail(w, r, reeve.CodeNotFound, "no such device")
	default:
		s.record(r, http.StatusOK, nil)
		httpx.WriteJSON(w, http.StatusOK, struct{}{})
	}
}

// device returns the device the request's key opens.
func (s *fakeServer) device(r *http.Request, uuid string) (*fakeDevice, bool) {
	d, ok := s.devices[uuid]
	if !ok || d.key == "" || d.key != bearerOf(r) {
		return nil, false
	}
	return d, true
}

func etagOf(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}

func (s *fakeServer) state(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid")
	wait, _ := strconv.Atoi(r.URL.Query().Get("wait"))
	inm := r.Header.Get("If-None-Match")
	s.mu.Lock()
	failWith := s.stateFail
	s.mu.Unlock()
	if failWith != 0 {
		s.record(r, failWith, nil)
		http.Error(w, "upstream is down", failWith)
		return
	}
	for {
		s.mu.Lock()
		d, ok := s.device(r, uuid)
		if !ok {
			s.mu.Unlock()
			s.fail(w, r, reeve.CodeUnauthorized, "unknown or revoked device key")
			return
		}
		body, changed, longPoll, hold, ignore, noETag := d.target, s.changed, s.longPoll, s.hold, s.ignoreETag, s.noETag
		s.mu.Unlock()
		etag := etagOf(body)
		if longPoll > 0 {
			w.Header().Set(serverapi.LongPollHeader, strconv.Itoa(longPoll))
		}
		if !noETag {
			w.Header().Set("ETag", etag)
		}
		if inm != etag || ignore {
			s.record(r, http.StatusOK, nil)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
			return
		}
		if wait > 0 && longPoll > 0 && hold > 0 {
			// Hold until the target changes or the (test's) time is up.
			t := time.NewTimer(hold)
			s.set(func(s *fakeServer) { s.holding++ })
			again := false
			select {
			case <-changed:
				again = true
			case <-r.Context().Done():
			case <-t.C:
			}
			t.Stop()
			s.set(func(s *fakeServer) { s.holding-- })
			if r.Context().Err() != nil {
				s.record(r, 0, nil) // the device went away
				return
			}
			if again {
				wait = 0
				continue
			}
		}
		s.record(r, http.StatusNotModified, nil)
		w.WriteHeader(http.StatusNotModified)
		return
	}
}

func (s *fakeServer) holdingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holding
}

// etag is the ETag of the device's target.
func (s *fakeServer) etag(uuid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return etagOf(s.devices[uuid].target)
}

func (s *fakeServer) report(w http.ResponseWriter, r *http.Request) {
	var cs reeve.CurrentState
	if err := httpx.DecodeJSON(w, r, serverapi.MaxBody, &cs); err != nil {
		s.fail(w, r, reeve.CodeInvalid, "%v", err)
		return
	}
	// The device's own entry is the one its key is for; the others are
	// its dependent devices'.
	var uuid string
	var rep reeve.DeviceReport
	deps := map[string]reeve.DeviceReport{}
	s.mu.Lock()
	for k, v := range cs {
		if _, ok := s.device(r, k); ok && uuid == "" {
			uuid, rep = k, v
		} else {
			deps[k] = v
		}
	}
	s.mu.Unlock()
	if uuid == "" { // refused below: record what was sent
		for k, v := range cs {
			uuid, rep = k, v
			delete(deps, k)
			break
		}
	}
	b, _ := json.Marshal(rep)
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(b, &raw)
	var fields []string
	for k := range raw {
		fields = append(fields, k)
	}
	sort.Strings(fields)
	withReport := func(fr *fakeRequest) { fr.ReportedFields, fr.Report, fr.Dependents = fields, rep, deps }

	s.mu.Lock()
	d, ok := s.device(r, uuid)
	failWith := s.reportFail
	if ok && failWith == 0 {
		d.state.Merge(rep)
	}
	s.mu.Unlock()
	switch {
	case !ok:
		s.record(r, http.StatusUnauthorized, withReport)
		httpx.WriteError(w, nil, reeve.Errorf(reeve.CodeUnauthorized, "unknown or revoked device key"))
	case failWith != 0:
		s.record(r, failWith, withReport)
		http.Error(w, "the database is down", failWith)
	default:
		s.record(r, http.StatusOK, withReport)
		httpx.WriteJSON(w, http.StatusOK, struct{}{})
	}
}

// addDevice registers a device as if it had registered before.
func (s *fakeServer) addDevice(uuid, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devices[uuid] = &fakeDevice{key: key, target: emptyTarget(uuid)}
}

// setKey replaces (or, with "", revokes) a device's key.
func (s *fakeServer) setKey(uuid, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devices[uuid].key = key
}

func (s *fakeServer) setTarget(uuid string, ts reeve.TargetState) {
	b, err := json.Marshal(ts)
	if err != nil {
		s.t.Fatal(err)
	}
	s.setRawTarget(uuid, b)
}

func (s *fakeServer) setRawTarget(uuid string, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devices[uuid].target = b
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeServer) set(f func(s *fakeServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// requests returns the requests seen so far with the method and path
// (the path may be a suffix, such as "/state").
func (s *fakeServer) requests(method, path string) []fakeRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []fakeRequest
	for _, r := range s.reqs {
		if r.Method == method && strings.HasSuffix(r.Path, path) {
			out = append(out, r)
		}
	}
	return out
}

func (s *fakeServer) polls() []fakeRequest { return s.requests(http.MethodGet, "/state") }

func (s *fakeServer) reports(status int) []fakeRequest {
	var out []fakeRequest
	for _, r := range s.requests(http.MethodPatch, "/device/v3/state") {
		if status == 0 || r.Status == status {
			out = append(out, r)
		}
	}
	return out
}

func emptyTarget(uuid string) []byte {
	b, _ := json.Marshal(testTarget(uuid, "", nil))
	return b
}

// testTarget is a target with the fleet app at commit (no release when "").
func testTarget(uuid, commit string, config map[string]string) reeve.TargetState {
	app := reeve.App{ID: 1, Name: "fleet", Class: reeve.ClassFleet, Releases: map[string]reeve.Release{}}
	if commit != "" {
		app.Releases[commit] = reeve.Release{ID: 1, Services: map[string]reeve.Service{
			"web": {ID: 1, ImageID: 1, Image: "nginx:alpine", Running: true},
		}}
	}
	return reeve.TargetState{uuid: {Name: "pi", Config: config, Apps: map[string]reeve.App{testAppUUID: app}}}
}

// fakeAgent stands for the agent: it stores targets and shows a status.
type fakeAgent struct {
	uuid string

	mu      sync.Mutex
	target  reeve.TargetState
	version int64
	sets    int
	refuse  error // SetTarget's answer when set
	status  agent.Status
}

func newFakeAgent(uuid string) *fakeAgent {
	return &fakeAgent{uuid: uuid, status: agent.Status{DeviceUUID: uuid, AppState: agent.AppStateApplied}}
}

func (a *fakeAgent) UUID() string { return a.uuid }

func (a *fakeAgent) APIKey() string { return "fake-device-api-key" }

func (a *fakeAgent) SetTarget(ctx context.Context, ts reeve.TargetState) (int64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sets++
	if a.refuse != nil {
		return 0, a.refuse
	}
	if err := ts.Validate(); err != nil {
		return 0, err
	}
	if _, ok := ts[a.uuid]; !ok || len(ts) != 1 {
		return 0, &reeve.ValidationError{Problems: []reeve.Problem{{Message: "not this device's target"}}}
	}
	a.target = ts
	a.version++
	return a.version, nil
}

func (a *fakeAgent) Target() (reeve.TargetState, int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.target == nil {
		return reeve.TargetState{a.uuid: {Apps: map[string]reeve.App{}}}, a.version
	}
	return a.target, a.version
}

func (a *fakeAgent) Status() agent.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Services = append([]agent.ServiceStatus(nil), s.Services...)
	return s
}

func (a *fakeAgent) setStatus(f func(s *agent.Status)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.status)
}

func (a *fakeAgent) setCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sets
}

// waitRec is one wait a loop started.
type waitRec struct {
	Kind string
	D    time.Duration
}

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// harness runs a Link against a fake server and a fake agent, with short
// intervals and a fixed jitter.
type harness struct {
	t       *testing.T
	srv     *fakeServer
	agent   *fakeAgent
	dataDir string
	conf    string // config.json's path
	logs    *lockedBuffer

	mu      sync.Mutex
	waits   []waitRec
	metrics metricsSample
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	return &harness{t: t, srv: newFakeServer(t), dataDir: filepath.Join(dir, "data"),
		conf: filepath.Join(dir, "config.json"), logs: &lockedBuffer{}}
}

// writeConfig writes config.json with the fake server's URL and fields.
func (h *harness) writeConfig(fields map[string]string) {
	h.t.Helper()
	m := map[string]any{"apiEndpoint": h.srv.URL()}
	for k, v := range fields {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(h.conf, b, 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// identity does what agentd does: load config.json and make the identity.
func (h *harness) identity() *Config {
	h.t.Helper()
	c, err := LoadConfig(h.conf)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := c.EnsureIdentity(); err != nil {
		h.t.Fatal(err)
	}
	if h.agent == nil {
		h.agent = newFakeAgent(c.UUID)
	}
	return c
}

func (h *harness) linkConfig() LinkConfig {
	return LinkConfig{
		ConfigPath:      h.conf,
		DataDir:         h.dataDir,
		Agent:           h.agent,
		Logger:          slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		PollInterval:    5 * time.Millisecond,
		ReportInterval:  5 * time.Millisecond,
		MetricsInterval: time.Hour,
		BackoffMin:      time.Millisecond,
		BackoffMax:      5 * time.Millisecond,
		RequestTimeout:  30 * time.Second,
		HostRoot:        h.t.TempDir(),
		Rand:            func() float64 { return 0.5 }, // no jitter: waits are exact
		waitHook: func(kind string, d time.Duration) {
			h.mu.Lock()
			h.waits = append(h.waits, waitRec{kind, d})
			h.mu.Unlock()
		},
		netInfo: func() (string, string) { return "192.168.1.20", "dc:a6:32:00:00:01" },
		readMetrics: func() metricsSample {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.metrics
		},
	}
}

// start creates and starts a link; mod changes its configuration first.
func (h *harness) start(mod func(*LinkConfig)) *Link {
	h.t.Helper()
	cfg := h.linkConfig()
	if mod != nil {
		mod(&cfg)
	}
	l, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := l.Start(h.t.Context()); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { l.Close() })
	return l
}

func (h *harness) waitsOf(kind string) []waitRec {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []waitRec
	for _, w := range h.waits {
		if w.Kind == kind {
			out = append(out, w)
		}
	}
	return out
}

// waitFor waits until cond holds; the deadline is generous, for slow
// machines, and says nothing about how fast the link is.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func readJSONFile(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func describe(reqs []fakeRequest) string {
	var b strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&b, "\n  %s %s wait=%q inm=%q -> %d %v", r.Method, r.Path, r.Wait, r.IfNoneMatch, r.Status, r.ReportedFields)
	}
	return b.String()
}
