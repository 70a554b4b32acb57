// Package lwm2m is the gateway's LwM2M driver: an LwM2M 1.0/1.1 server
// over CoAP on UDP (github.com/plgd-dev/go-coap/v3) that devices register
// with, and that then drives them as a CoAP client over the address they
// registered from.
//
// # What it speaks
//
// Registration interface (server side): POST /rd?ep=&lt=&lwm2m=&b= with
// the device's objects in CoRE link format → 2.01 Created, Location-Path
// rd/<id>; POST /rd/<id> (update: lifetime, binding, objects, and the
// address the update came from) → 2.04; DELETE /rd/<id> → 2.02. A new
// registration under an endpoint name replaces the old one. Bad requests
// get 4.00 (no ep, bad lifetime or binding, payload that is not link
// format), 4.04 (unknown registration), 4.05 (wrong method), 4.12 (an
// LwM2M major version other than 1), 4.15 (a payload format other than
// link format); each is logged, with the endpoint when it is known.
//
// Device management (client side, to each device): reads of Object 3
// (/3/0: manufacturer 0, model 1, serial number 2, firmware version 3,
// device type 17) after every registration and registration update, as
// one object instance read (TLV, SenML JSON or OMA JSON) falling back to
// one plain-text read per resource; Execute /3/0/4 (Restart); the
// firmware update of Object 5 (Update); and, when configured, an Execute
// (Identify) and a Write (Configure) on resources the device's firmware
// defines, since LwM2M has no standard ones.
//
// A device's LocalID is its endpoint name; its Commit is its firmware
// version (/3/0/3): reeve firmware reports the release it runs there. It
// is Online while its registration is within its lifetime plus a grace.
// Scan shows a registered device once its Object 3 was read (what it said
// is kept across its later registrations), so that a device is never
// shown running nothing only because it was not asked yet. Queue mode
// (b=UQ) is accepted but not waited for: a sleeping device's requests
// time out. Requests go out over the server's socket to the address of
// the device's latest registration or update.
//
// # Firmware update (Object 5, pull)
//
// Update writes the Package URI (/5/0/1) with fw.URL, follows State
// (/5/0/3) and Update Result (/5/0/5) by reading them every "poll"
// interval, executes Update (/5/0/2) once State is 2 (Downloaded), and
// returns once Update Result is 1 and the device reports fw.Commit in
// /3/0/3. The spec has no percentage, so progress is coarse: 0 at the
// start, 10 while Downloading, 50 once Downloaded, 75 while Updating (from
// the Execute on), 100 when the device runs fw.Commit. Update Result 2..9
// is an *driver.UpdateError with the spec's meaning as Reason, as are a
// device without Object 5 and one refusing the write or the execute. The device
// going away before Update was executed, or not coming back within
// "reboot_timeout" after it, is driver.ErrOffline. A device already
// Downloading or Downloaded with the same Package URI (an install that
// was interrupted) goes on from there; a device left in another state is
// reset first (an empty Package URI). The driver does not observe: the
// State and Result reads are the truth, observations would not survive
// the re-registration that a firmware update's reboot brings, and the
// reference client's observe does not cancel cleanly.
//
// Identify and Configure return an error wrapping errors.ErrUnsupported
// unless their settings name a resource; Logs always does: LwM2M has no
// log object.
//
// # Settings
//
//	listen          UDP address to serve on (default ":5683"); with port 0, the port
//	                chosen at the first Open is kept for later ones, since
//	                registered devices keep sending to it
//	timeout         how long one request to a device may take (default 5s)
//	poll            interval of the State/Result reads during an update (default 1s)
//	grace           added to a registration's lifetime before a device is offline (default 15s)
//	reboot_timeout  how long Update waits for a device to come back after executing
//	                Update, to start a download, or to reset (default 5m)
//	identify        a resource (/O/I/R) that Identify executes, e.g. a vendor
//	                "blink" resource; empty (default): Identify is unsupported
//	configure       a string resource (/O/I/R) that Configure writes as JSON
//	                {"env":{…},"config":{…}}; empty (default): Configure is unsupported
//	write_format    "text" (default) or "tlv": the format of single-resource writes
//	uri_digest      "sha256": append "#sha256=<hex>" to the Package URI (when the
//	                result fits the resource's 255 bytes) for devices that check the
//	                download against it; the fragment never reaches the HTTP server.
//	                Empty (default): the URI is fw.URL as given
//
// Other keys are ignored. New returns a driver.Driver (the Factory);
// NewDriver returns the *Driver, with Addr, and takes the logger.
package lwm2m

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpserver "github.com/plgd-dev/go-coap/v3/udp/server"

	"reeve.dev/reeve/internal/gateway/driver"
)

// Object 3 and Object 5 resources the driver uses.
var (
	pathDevice        = path{3, 0}
	pathReboot        = path{3, 0, 4}
	pathFirmwareVer   = path{3, 0, 3}
	pathPackageURI    = path{5, 0, 1}
	pathUpdate        = path{5, 0, 2}
	pathUpdateState   = path{5, 0, 3}
	pathUpdateResult  = path{5, 0, 5}
	deviceInfoFields  = []uint16{0, 1, 2, 3, 17}
	deviceInfoKeys    = map[uint16]string{0: "manufacturer", 1: "model", 2: "serial_number", 3: "firmware_version", 17: "device_type"}
	errNotOpen        = fmt.Errorf("lwm2m: %w", driver.ErrNotOpen)
	settingsDefaults  = map[string]string{"listen": ":5683", "timeout": "5s", "poll": "1s", "grace": "15s", "reboot_timeout": "5m", "write_format": "text"}
	settingsDurations = []string{"timeout", "poll", "grace", "reboot_timeout"}
)

type config struct {
	listen        string
	timeout       time.Duration
	poll          time.Duration
	grace         time.Duration
	rebootTimeout time.Duration
	identify      path
	configure     path
	writeTLV      bool
	uriDigest     bool
}

var _ driver.Driver = (*Driver)(nil)

// Driver is the LwM2M driver. Its methods are safe for concurrent use.
type Driver struct {
	cfg config
	log *slog.Logger

	life sync.Mutex // serializes Open and Close

	mu      sync.Mutex
	sess    *session // nil when closed
	bind    string   // the address Open binds
	bound   net.Addr // the address the last Open bound
	appUUID string
	devices map[string]*device // by endpoint name, kept across Close and Open
	byReg   map[string]*device // by registration ID
}

// session is one Open: the server, its socket and the goroutines that
// serve them, all stopped by Close.
type session struct {
	ctx    context.Context
	cancel context.CancelFunc
	srv    *udpserver.Server
	ln     *coapnet.UDPConn
	wg     sync.WaitGroup
	ready  chan struct{} // closed once Serve runs: requests can go out
}

// device is what the driver knows of one endpoint.
type device struct {
	ep    string
	reg   *registration // nil once de-registered; replaced, never changed
	info  deviceInfo    // last read, kept across registrations
	known bool          // info was read once (or could not be, for good)

	infoWanted, infoRunning bool
	updating                chan struct{} // one Update at a time
}

type deviceInfo struct {
	commit     string
	deviceType string
	fields     map[string]string
}

// registration is one registration of a device, immutable: an update
// makes a new one with the same ID.
type registration struct {
	id       string
	addr     *net.UDPAddr
	lifetime time.Duration
	renewed  time.Time
	version  string
	binding  string
	root     string // alternate path, "" for none
	objects  []string
}

// New makes the driver from its settings (see the package documentation);
// it matches driver.Factory.
func New(settings map[string]string) (driver.Driver, error) {
	return NewDriver(settings, slog.Default())
}

// NewDriver is New with the logger the driver logs to.
func NewDriver(settings map[string]string, log *slog.Logger) (*Driver, error) {
	get := func(k string) string {
		if v, ok := settings[k]; ok && v != "" {
			return v
		}
		return settingsDefaults[k]
	}
	cfg := config{listen: get("listen")}
	if _, _, err := net.SplitHostPort(cfg.listen); err != nil {
		return nil, fmt.Errorf("lwm2m: listen %q: %w", cfg.listen, err)
	}
	durs := []*time.Duration{&cfg.timeout, &cfg.poll, &cfg.grace, &cfg.rebootTimeout}
	for i, k := range settingsDurations {
		d, err := time.ParseDuration(get(k))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("lwm2m: %s %q: want a positive duration", k, get(k))
		}
		*durs[i] = d
	}
	for k, dst := range map[string]*path{"identify": &cfg.identify, "configure": &cfg.configure} {
		if v := get(k); v != "" {
			p, err := parsePath(v)
			if err != nil || len(p) != 3 {
				return nil, fmt.Errorf("lwm2m: %s %q: want a resource path /O/I/R", k, v)
			}
			*dst = p
		}
	}
	switch v := get("write_format"); v {
	case "text":
	case "tlv":
		cfg.writeTLV = true
	default:
		return nil, fmt.Errorf("lwm2m: write_format %q: want text or tlv", v)
	}
	switch v := get("uri_digest"); v {
	case "":
	case "sha256":
		cfg.uriDigest = true
	default:
		return nil, fmt.Errorf("lwm2m: uri_digest %q: want sha256 or nothing", v)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Driver{
		cfg:     cfg,
		log:     log.With("driver", "lwm2m"),
		bind:    cfg.listen,
		devices: map[string]*device{},
		byReg:   map[string]*device{},
	}, nil
}

// Name is "lwm2m".
func (d *Driver) Name() string { return "lwm2m" }

// Addr is the UDP address the driver serves on (nil while it never was
// opened).
func (d *Driver) Addr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bound
}

// Open binds the UDP port and serves registrations. Registrations made
// before a Close are kept: devices do not know the gateway paused.
func (d *Driver) Open(ctx context.Context, app driver.App) error {
	d.life.Lock()
	defer d.life.Unlock()
	d.mu.Lock()
	open, bind := d.sess != nil, d.bind
	d.mu.Unlock()
	if open {
		return errors.New("lwm2m: already open")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ln, err := coapnet.NewListenUDP("udp", bind)
	if err != nil {
		return fmt.Errorf("lwm2m: listen on %s: %w", bind, err)
	}
	s := &session{ln: ln, ready: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.srv = udp.NewServer(
		options.WithContext(s.ctx),
		options.WithMux(d.router(s)),
		options.WithErrors(d.coapError),
		options.WithPeriodicRunner(s.periodic),
	)
	d.mu.Lock()
	d.bound = ln.LocalAddr()
	if host, port, _ := net.SplitHostPort(bind); port == "0" {
		if a, ok := ln.LocalAddr().(*net.UDPAddr); ok {
			d.bind = net.JoinHostPort(host, fmt.Sprint(a.Port))
		}
	}
	if app.UUID != d.appUUID {
		d.appUUID = app.UUID
		d.devices = map[string]*device{}
		d.byReg = map[string]*device{}
	}
	d.sess = s
	// Devices may have rebooted or updated while the driver was closed.
	for _, dev := range d.devices {
		if d.online(dev.reg, time.Now()) {
			d.kickInfo(s, dev)
		}
	}
	d.mu.Unlock()
	served := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.srv.Serve(ln)
		if err != nil && s.ctx.Err() == nil {
			d.log.Error("lwm2m: serve", "err", err)
		}
		served <- err
	}()
	select {
	case <-s.ready:
	case err := <-served:
		d.mu.Lock()
		d.sess = nil
		d.mu.Unlock()
		_ = s.stop()
		return fmt.Errorf("lwm2m: serve on %s: %w", ln.LocalAddr(), err)
	}
	d.log.Info("lwm2m: serving", "addr", ln.LocalAddr().String(), "app", app.Name)
	return nil
}

// Close stops serving, releases the UDP port and waits for every
// goroutine the driver started; calls in flight return ErrNotOpen.
func (d *Driver) Close() error {
	d.life.Lock()
	defer d.life.Unlock()
	d.mu.Lock()
	s := d.sess
	d.sess = nil
	d.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := s.stop(); err != nil {
		return fmt.Errorf("lwm2m: close: %w", err)
	}
	return nil
}

// stop ends the session and waits for its goroutines.
func (s *session) stop() error {
	s.cancel()
	s.srv.Stop()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// periodic runs the server's periodic work (retransmissions, idle
// connections) in a goroutine the session owns. Serve starts it once it
// holds the socket, which tells Open the server can send requests.
func (s *session) periodic(f func(now time.Time) bool) {
	close(s.ready)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.ctx.Done():
				return
			case now := <-t.C:
				if !f(now) {
					return
				}
			}
		}
	}()
}

// acquire starts a call on the open session: ctx is also ended by Close,
// done must be called when the call returns.
func (d *Driver) acquire(ctx context.Context) (s *session, cctx context.Context, done func(), err error) {
	d.mu.Lock()
	s = d.sess
	if s == nil {
		d.mu.Unlock()
		return nil, nil, nil, errNotOpen
	}
	s.wg.Add(1)
	d.mu.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return s, cctx, func() { stop(); cancel(); s.wg.Done() }, nil
}

// lookup finds a device by local ID.
func (d *Driver) lookup(localID string) (*device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev, ok := d.devices[localID]
	if !ok {
		return nil, fmt.Errorf("lwm2m: %s: %w", localID, driver.ErrUnknownDevice)
	}
	return dev, nil
}

// current is the device's registration while it is online, else nil.
func (d *Driver) current(dev *device) *registration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.online(dev.reg, time.Now()) {
		return nil
	}
	return dev.reg
}

func (d *Driver) online(r *registration, now time.Time) bool {
	return r != nil && now.Before(r.renewed.Add(r.lifetime+d.cfg.grace))
}

// Scan returns the registered devices, Online while within their
// lifetime, with what Object 3 last said; a device shows once its Object 3
// was first read (or could not be).
func (d *Driver) Scan(ctx context.Context) ([]driver.Device, error) {
	_, _, done, err := d.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	var out []driver.Device
	for _, dev := range d.devices {
		if dev.reg == nil || !dev.known {
			continue
		}
		info := map[string]string{"lwm2m_version": dev.reg.version}
		for k, v := range dev.info.fields {
			info[k] = v
		}
		out = append(out, driver.Device{
			LocalID:    dev.ep,
			DeviceType: dev.info.deviceType,
			Online:     d.online(dev.reg, now),
			Commit:     dev.info.commit,
			Info:       info,
		})
	}
	slices.SortFunc(out, func(a, b driver.Device) int { return strings.Compare(a.LocalID, b.LocalID) })
	return out, nil
}

// coapError logs what go-coap could not handle: a datagram that is not
// CoAP, a response that could not be sent. It names the endpoint whose
// address the error concerns, when there is one.
func (d *Driver) coapError(err error) {
	msg := err.Error()
	attrs := []any{"err", err}
	d.mu.Lock()
	for _, dev := range d.devices {
		if dev.reg != nil && strings.Contains(msg, dev.reg.addr.String()+":") {
			attrs = append(attrs, "endpoint", dev.ep)
			break
		}
	}
	d.mu.Unlock()
	d.log.Warn("lwm2m: coap", attrs...)
}

// muxRouter is the registration interface's routes.
func (d *Driver) router(s *session) *mux.Router {
	r := mux.NewRouter()
	r.SetErrorHandler(func(err error) { d.log.Warn("lwm2m: router", "err", err) })
	r.DefaultHandleFunc(func(w mux.ResponseWriter, m *mux.Message) { d.notFound(w, m) })
	r.HandleFunc("/rd", func(w mux.ResponseWriter, m *mux.Message) { d.register(s, w, m) })
	r.HandleFunc("/rd/{id}", func(w mux.ResponseWriter, m *mux.Message) { d.updateOrDelete(s, w, m, m.RouteParams.Vars["id"]) })
	return r
}
