package fleetlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/serverapi"
)

// Agent is what the link needs of the agent (*agent.Agent has it).
type Agent interface {
	UUID() string
	SetTarget(ctx context.Context, ts reeve.TargetState) (int64, error)
	Target() (reeve.TargetState, int64)
	Status() agent.Status
	// APIKey is the device-wide key of the agent's API, reported to the
	// server.
	APIKey() string
}

var _ Agent = (*agent.Agent)(nil)

// LinkConfig configures a Link. Zero values get the documented defaults.
type LinkConfig struct {
	// Config is the device's config.json; when nil it is read from
	// ConfigPath. The Link owns it from New on: do not change it.
	Config     *Config
	ConfigPath string
	// DataDir holds the link's caches (the ETag of the applied target, the
	// last report the server accepted). Required.
	DataDir string
	// Agent receives the target and reports its status. Required; its
	// UUID must be the config's.
	Agent  Agent
	Logger *slog.Logger
	// HTTPClient talks to the server. Its Timeout is ignored (a long poll
	// outlives any fixed one): every request is bounded by RequestTimeout,
	// plus its wait for a long poll. Default: a client on a clone of
	// http.DefaultTransport.
	HTTPClient *http.Client
	// APIPort is the agent's local API port, reported as api_port; 0
	// leaves it out.
	APIPort int
	// HostRoot is where /proc, /sys and /etc are read from. Default "/".
	HostRoot string
	// Dependents, when the device carries dependent devices, returns
	// what the server should hear of each (dependent.Manager.Reports);
	// reports then carry what changed of them too.
	Dependents func(ctx context.Context) (map[string]reeve.DeviceReport, error)

	// PollInterval is the wait between polls when the target does not set
	// REEVE_SUPERVISOR_POLL_INTERVAL. Default 60 s.
	PollInterval time.Duration
	// ReportInterval is the shortest time between two reports. Default 10 s.
	ReportInterval time.Duration
	// MetricsInterval is how often the metrics are read. Default 5 min.
	MetricsInterval time.Duration
	// BackoffMin and BackoffMax bound the wait after failures. Defaults
	// 1 s and 5 min. A refused credential is retried every BackoffMax.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// RequestTimeout bounds a request unless the target's
	// REEVE_SUPERVISOR_API_REQUEST_TIMEOUT says otherwise; a long poll
	// gets its wait on top.
	// Default 30 s.
	RequestTimeout time.Duration
	// Now is the clock (default time.Now); Rand returns a number in [0, 1)
	// for jitter (default math/rand/v2).
	Now  func() time.Time
	Rand func() float64

	// Test hooks.
	waitHook    func(kind string, d time.Duration) // told of every wait a loop starts
	netInfo     func() (ips, macs string)          // replaces reading the interfaces
	readMetrics func() metricsSample               // replaces reading /proc and /sys
}

// Kinds of waits, as told to waitHook.
const (
	waitProvision    = "provision"    // after a failed registration
	waitPoll         = "poll"         // the poll interval
	waitLongPoll     = "longpoll"     // between two long polls
	waitBackoff      = "backoff"      // after a failed poll
	waitUnauthorized = "unauthorized" // after a refused key
	waitRefused      = "refused"      // after a target the agent refused
	waitReport       = "report"       // the report interval, or report backoff
)

const minPollInterval = 10 * time.Second

func (c *LinkConfig) defaults() error {
	if c.Agent == nil {
		return errors.New("fleet link: an agent is required")
	}
	if c.DataDir == "" {
		return errors.New("fleet link: a data directory is required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HostRoot == "" {
		c.HostRoot = "/"
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 60 * time.Second
	}
	if c.ReportInterval <= 0 {
		c.ReportInterval = 10 * time.Second
	}
	if c.MetricsInterval <= 0 {
		c.MetricsInterval = 5 * time.Minute
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.netInfo == nil {
		c.netInfo = netInfo
	}
	return nil
}

// LinkStatus is the state of the link, for people and the local API.
type LinkStatus struct {
	Server      string `json:"server"`
	UUID        string `json:"uuid"`
	Provisioned bool   `json:"provisioned"`
	// ProvisionError is why the device is not registered yet.
	ProvisionError string    `json:"provision_error,omitempty"`
	LastPoll       time.Time `json:"last_poll,omitzero"` // last successful poll
	PollError      string    `json:"poll_error,omitempty"`
	// TargetError is why the last target from the server was not applied;
	// the apps run on as they were.
	TargetError string    `json:"target_error,omitempty"`
	LastReport  time.Time `json:"last_report,omitzero"` // last accepted report
	ReportError string    `json:"report_error,omitempty"`
	// Unauthorized is true while the server refuses the device's
	// credential; the error fields say what to do.
	Unauthorized bool `json:"unauthorized"`
	// LocalMode is true while the fleet's device config sets
	// REEVE_SUPERVISOR_LOCAL_MODE: the target is then set through the
	// local API, and the server's is not applied.
	LocalMode    bool           `json:"local_mode"`
	LongPolling  bool           `json:"long_polling"`
	PollInterval reeve.Duration `json:"poll_interval"`
}

// Link connects one agent to its fleet server. Create it with New, then
// Start; Close stops every goroutine it started.
type Link struct {
	cfg     LinkConfig
	conf    *Config // owned by the run goroutine once started
	log     *slog.Logger
	agent   Agent
	uuid    string
	client  *serverapi.Client // carries the device key
	hc      *http.Client      // the client's connections, closed with the link
	os      string            // os_version, read at New
	metrics *metricsReader    // used by the report loop

	poke chan struct{} // wakes a wait; buffered 1

	mu           sync.Mutex
	status       LinkStatus
	pokePending  bool                    // a Poke not yet answered by a poll
	cancelPoll   context.CancelCauseFunc // cancels the long poll in flight
	unauthorized [3]bool                 // by source: the server refused the credential last time
	badConfig    string                  // the device config warnings last logged
	alive        time.Time               // when the poll (or provisioning) loop last made an attempt

	startOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

var errPoked = errors.New("poked: poll again now")

// New checks the configuration and prepares the link. It makes the
// device's identity (and saves config.json) when the config has none yet.
func New(cfg LinkConfig) (*Link, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	conf := cfg.Config
	if conf == nil {
		if cfg.ConfigPath == "" {
			return nil, errors.New("fleet link: a config.json is required")
		}
		c, err := LoadConfig(cfg.ConfigPath)
		if err != nil {
			return nil, err
		}
		conf = c
	} else {
		conf = conf.clone()
		if conf.Path == "" {
			conf.Path = cfg.ConfigPath
		}
		if err := conf.Validate(); err != nil {
			return nil, err
		}
	}
	if _, err := conf.EnsureIdentity(); err != nil {
		return nil, err
	}
	if id := cfg.Agent.UUID(); id != conf.UUID {
		return nil, fmt.Errorf("fleet link: the agent's UUID %s is not the one in config.json (%s): give the agent the config's uuid", id, conf.UUID)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("fleet link: create data directory: %w", err)
	}
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		c.Timeout = 0
		hc = &c
	}
	client := serverapi.NewClient(conf.APIEndpoint, conf.DeviceAPIKey, hc)
	l := &Link{
		cfg:     cfg,
		conf:    conf,
		log:     cfg.Logger.With("component", "fleetlink"),
		agent:   cfg.Agent,
		uuid:    conf.UUID,
		client:  client,
		hc:      hc,
		os:      osVersion(cfg.HostRoot),
		metrics: newMetricsReader(cfg.HostRoot, cfg.DataDir),
		poke:    make(chan struct{}, 1),
	}
	l.status = LinkStatus{Server: client.BaseURL(), UUID: conf.UUID, Provisioned: conf.ProvisioningKey == ""}
	l.status.PollInterval = reeve.Duration(l.pollInterval())
	return l, nil
}

// Start starts provisioning (when the device is not registered yet), then
// polling and reporting, and returns.
func (l *Link) Start(ctx context.Context) error {
	started := false
	l.startOnce.Do(func() {
		started = true
		ctx, cancel := context.WithCancel(ctx)
		l.mu.Lock()
		l.cancel = cancel
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(ctx)
		}()
	})
	if !started {
		return errors.New("fleet link: already started")
	}
	return nil
}

// Close stops every goroutine of the link and waits for them. It may be
// called more than once, and before Start.
func (l *Link) Close() error {
	l.mu.Lock()
	cancel := l.cancel
	l.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	l.wg.Wait()
	// A connection the transport dialled for a request that another one
	// served sits idle without having sent a byte; the server would wait
	// for it when it shuts down.
	l.hc.CloseIdleConnections()
	return nil
}

// Poke makes the link poll now: a wait between polls ends at once, and a
// long poll in flight is cancelled and replaced by an immediate plain poll.
// (A long poll answers by itself when the target changes, but it may hang
// on a connection that died with a network change; a poke is the moment to
// find out.)
func (l *Link) Poke() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pokePending = true
	if l.cancelPoll != nil {
		l.cancelPoll(errPoked)
	}
	select {
	case l.poke <- struct{}{}:
	default:
	}
}

// Status returns the link's state.
func (l *Link) Status() LinkStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

// beat records that the poll (or provisioning) loop is making attempts.
func (l *Link) beat() {
	l.mu.Lock()
	l.alive = l.cfg.Now()
	l.mu.Unlock()
}

// Healthy reports whether the loop that provisions and polls is making
// attempts, failed ones included: a poll may wait out a backoff, a poll
// interval and a long poll, but not much longer.
func (l *Link) Healthy() error {
	dc := l.deviceConfig()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.alive.IsZero() {
		return errors.New("the fleet link has not started polling")
	}
	limit := l.cfg.BackoffMax + dc.PollInterval + dc.APIRequestTimeout + serverapi.MaxWait*time.Second + time.Minute
	if since := l.cfg.Now().Sub(l.alive); since > limit {
		return fmt.Errorf("the fleet link has not polled for %s", since.Round(time.Second))
	}
	return nil
}

// run provisions the device, then polls and reports until ctx ends.
func (l *Link) run(ctx context.Context) {
	if !l.provision(ctx) {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.reportLoop(ctx)
	}()
	l.pollLoop(ctx)
}

// sleep waits d, or until ctx ends (false), or until a Poke when poke is
// not nil.
func (l *Link) sleep(ctx context.Context, kind string, d time.Duration, poke <-chan struct{}) bool {
	if l.cfg.waitHook != nil {
		l.cfg.waitHook(kind, d)
	}
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-poke:
	}
	return true
}

// backoff returns the wait after the n-th failure in a row: BackoffMin
// doubled each time, capped at BackoffMax, with jitter in its upper half so
// that devices cut off together do not come back together.
func (l *Link) backoff(n int) time.Duration {
	d := l.cfg.BackoffMin
	for i := 1; i < n && d < l.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, l.cfg.BackoffMax)
	return d/2 + time.Duration(l.cfg.Rand()*float64(d/2))
}

// jitter spreads d by ±10 %.
func (l *Link) jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*l.cfg.Rand()))
}

// requestContext bounds one request: RequestTimeout plus its wait.
func (l *Link) requestContext(ctx context.Context, wait time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, l.deviceConfig().APIRequestTimeout+wait)
}

// Where a refused credential was seen.
const (
	srcProvision = iota // the provisioning key
	srcPoll             // the device key, polling
	srcReport           // the device key, reporting
)

// setUnauthorized records whether the server refused the credential the
// last time src used it.
func (l *Link) setUnauthorized(src int, refused bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unauthorized[src] = refused
	l.status.Unauthorized = l.unauthorized[srcProvision] || l.unauthorized[srcPoll] || l.unauthorized[srcReport]
}

// isUnauthorized tells a refused credential apart.
func isUnauthorized(err error) bool { return reeve.ErrorCode(err) == reeve.CodeUnauthorized }

// isInvalid tells a refused target apart.
func isInvalid(err error) bool {
	var ve *reeve.ValidationError
	return errors.As(err, &ve)
}

// msgKeyRefused is what an operator reads when the device key is refused.
const msgKeyRefused = "the server refused this device's key (it was revoked or the device was deleted); the apps keep running; provision the device again with a new key"

// errNotProvisioned answers what needs the server before the device is
// registered.
var errNotProvisioned = reeve.Errorf(reeve.CodeUnavailable, "the device is not registered with its fleet server yet: try again once it is (reeve local status shows why it is not)")

// UploadLogs sends one request of the device's log stream (see
// logship.Upload). Until the device is registered it fails: the lines wait.
func (l *Link) UploadLogs(ctx context.Context, stream string, body io.Reader) (uint64, error) {
	if !l.Status().Provisioned {
		return 0, errNotProvisioned
	}
	ack, err := l.client.LogStream(ctx, l.uuid, stream, body, true)
	return ack.LastSeq, err
}

// RegisterDependent provisions a dependent device this device carries,
// through the fleet server.
func (l *Link) RegisterDependent(ctx context.Context, req dependent.ProvisionRequest) (reeve.Device, error) {
	rctx, cancel := l.requestContext(ctx, 0)
	defer cancel()
	return l.client.RegisterDependent(rctx, l.uuid, serverapi.RegisterDependentRequest{
		AppID: req.AppID, DeviceType: req.DeviceType, LocalID: req.LocalID, Name: req.Name,
	})
}

// Tags returns the device's tags from the server.
func (l *Link) Tags(ctx context.Context) (reeve.Tags, error) {
	if !l.Status().Provisioned {
		return nil, errNotProvisioned
	}
	rctx, cancel := l.requestContext(ctx, 0)
	defer cancel()
	return l.client.Tags(rctx, l.uuid)
}

// PatchTags changes the device's tags on the server (a nil value removes
// one) and returns them all.
func (l *Link) PatchTags(ctx context.Context, patch map[string]*string) (reeve.Tags, error) {
	if !l.Status().Provisioned {
		return nil, errNotProvisioned
	}
	rctx, cancel := l.requestContext(ctx, 0)
	defer cancel()
	return l.client.PatchTags(rctx, l.uuid, patch)
}
