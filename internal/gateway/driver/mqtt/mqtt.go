// Package mqtt is the gateway's driver for devices that meet it at an MQTT
// broker (Debian's mosquitto, or any MQTT 5 broker). The topic scheme a
// device implements is in docs/mqtt.md: under <prefix>/<app uuid>/<local
// id>/ a device keeps its retained status (with a Last Will that says it
// went offline), publishes logs, firmware acknowledgements and update
// results, and receives commands and firmware chunks.
//
// Settings (all optional): broker (tcp://127.0.0.1:1883; tcp, mqtt, tls,
// ssl, mqtts), prefix (reeve), client_id (reeve-gateway-<app uuid>),
// username, password, ca_file, chunk_size (1024), ack_timeout (10s),
// retries (5), install_timeout (5m), keepalive (30s), connect_timeout
// (30s), log_buffer (1000 lines per device). Other keys are ignored.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"reeve.dev/reeve/internal/gateway/driver"
)

// Driver is the mqtt driver. Its zero value is not usable: make one with
// New.
type Driver struct {
	cfg config
	log *slog.Logger // nil for slog.Default() as it is at Open

	opMu sync.Mutex // serialises Open and Close
	mu   sync.Mutex
	s    *session // nil while closed
}

var _ driver.Driver = (*Driver)(nil)

// New makes an mqtt driver from its settings (see the package doc); it
// connects nothing until Open. Its signature is a driver.Factory.
func New(settings map[string]string) (driver.Driver, error) {
	cfg, err := parseSettings(settings)
	if err != nil {
		return nil, fmt.Errorf("mqtt driver: %w", err)
	}
	return &Driver{cfg: cfg}, nil
}

// Name is "mqtt".
func (d *Driver) Name() string { return "mqtt" }

// Open connects to the broker and subscribes to the app's topics. It
// returns once subscribed, or with an error when the broker cannot be
// reached within connect_timeout; after that the link is kept up,
// reconnecting when it drops, until Close.
func (d *Driver) Open(ctx context.Context, app driver.App) error {
	if !validLevel(app.UUID) {
		return fmt.Errorf("mqtt driver: app %q: UUID %q cannot be a topic level", app.Name, app.UUID)
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if _, err := d.session(); err == nil {
		return errors.New("mqtt driver: already open")
	}
	log := d.log
	if log == nil {
		log = slog.Default().With("driver", "mqtt")
	}
	s := newSession(d.cfg, app, log.With("app", app.UUID))
	cctx, cancel := context.WithTimeout(ctx, d.cfg.connectTimeout)
	defer cancel()
	l, err := s.connect(cctx)
	if err != nil {
		s.cancel()
		return fmt.Errorf("mqtt driver: broker %s: %w", d.cfg.broker.Redacted(), err)
	}
	s.start(l)
	d.mu.Lock()
	d.s = s
	d.mu.Unlock()
	return nil
}

// Close disconnects from the broker and stops every goroutine Open
// started; calls still running return ErrNotOpen. Closing a closed driver
// does nothing.
func (d *Driver) Close() error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.mu.Lock()
	s := d.s
	d.s = nil
	d.mu.Unlock()
	if s != nil {
		s.stop()
	}
	return nil
}

func (d *Driver) session() (*session, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.s == nil {
		return nil, fmt.Errorf("mqtt driver: %w", driver.ErrNotOpen)
	}
	return d.s, nil
}

// Scan lists the devices that have a status on the broker, online or not;
// while the broker link is down every device shows offline.
func (d *Driver) Scan(ctx context.Context) ([]driver.Device, error) {
	s, err := d.session()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	devs := make([]driver.Device, 0, len(s.devices))
	for _, id := range slices.Sorted(maps.Keys(s.devices)) {
		dev := s.devices[id]
		devs = append(devs, driver.Device{
			LocalID:    id,
			DeviceType: dev.deviceType,
			Online:     dev.online && s.cli != nil,
			Commit:     dev.commit,
			Info:       maps.Clone(dev.info),
		})
	}
	return devs, nil
}

// Restart sends {"cmd":"restart"}.
func (d *Driver) Restart(ctx context.Context, localID string) error {
	return d.command(ctx, localID, cmdRestart, simpleCmd(cmdRestart))
}

// Identify sends {"cmd":"identify"}.
func (d *Driver) Identify(ctx context.Context, localID string) error {
	return d.command(ctx, localID, cmdIdentify, simpleCmd(cmdIdentify))
}

// Configure sends {"cmd":"configure","env":{…},"config":{…}}.
func (d *Driver) Configure(ctx context.Context, localID string, env, config map[string]string) error {
	return d.command(ctx, localID, cmdConfigure, configureCmd(env, config))
}

// command publishes a command to an online device (QoS 1: it returns once
// the broker has it).
func (d *Driver) command(ctx context.Context, id, name string, payload []byte) error {
	s, err := d.session()
	if err != nil {
		return err
	}
	if _, err := s.reachable(id); err != nil {
		return err
	}
	if err := s.publish(ctx, s.topics.cmd(id), payload); err != nil {
		return fmt.Errorf("device %s: %s: %w", id, name, err)
	}
	return nil
}

// Logs drains what the device logged since the last call.
func (d *Driver) Logs(ctx context.Context, localID string) ([]driver.LogLine, error) {
	s, err := d.session()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dev, ok := s.devices[localID]
	if !ok {
		return nil, fmt.Errorf("device %s: %w", localID, driver.ErrUnknownDevice)
	}
	return dev.logs.drain(time.Now()), nil
}

// session is one Open: the link to the broker and what it learnt.
type session struct {
	cfg    config
	app    driver.App
	topics topics
	log    *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // closed when the link goroutine returned

	mu      sync.Mutex
	cli     *paho.Client // nil while the link is down (link.cli otherwise)
	devices map[string]*device
	warns   warnLimiter
}

func newSession(cfg config, app driver.App, log *slog.Logger) *session {
	ctx, cancel := context.WithCancel(context.Background())
	return &session{
		cfg: cfg, app: app, topics: newTopics(cfg.prefix, app.UUID), log: log,
		ctx: ctx, cancel: cancel, done: make(chan struct{}),
		devices: map[string]*device{},
	}
}

// link is one connection to the broker.
type link struct {
	cli  *paho.Client
	conn net.Conn
}

// start keeps the link up from l on, until stop.
func (s *session) start(l link) {
	s.setClient(l.cli)
	go s.run(l)
}

func (s *session) stop() {
	s.cancel()
	<-s.done
}

// run waits for the link to drop and connects again, backing off, until
// the session ends.
func (s *session) run(l link) {
	defer close(s.done)
	const minDelay, maxDelay = 250 * time.Millisecond, 15 * time.Second
	delay := minDelay
	for {
		if l.cli != nil {
			select {
			case <-l.cli.Done():
				s.setClient(nil)
				s.log.Warn("mqtt: broker link lost; reconnecting", "broker", s.cfg.broker.Redacted())
				delay = minDelay
			case <-s.ctx.Done():
				// A broker that does not read must not hold Close up.
				_ = l.conn.SetDeadline(time.Now().Add(5 * time.Second))
				_ = l.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
				<-l.cli.Done()
				s.setClient(nil)
				return
			}
		}
		select {
		case <-time.After(delay):
		case <-s.ctx.Done():
			return
		}
		var err error
		l, err = s.connect(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.log.Warn("mqtt: cannot reach the broker", "broker", s.cfg.broker.Redacted(), "err", err, "retry_in", delay)
			delay = min(2*delay, maxDelay)
			continue
		}
		s.log.Info("mqtt: broker link up again", "broker", s.cfg.broker.Redacted())
		s.setClient(l.cli)
	}
}

func (s *session) setClient(cli *paho.Client) {
	s.mu.Lock()
	s.cli = cli
	s.mu.Unlock()
}

func (s *session) client() *paho.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cli
}

// connect dials the broker, connects and subscribes to the app's topics.
func (s *session) connect(ctx context.Context) (link, error) {
	var (
		conn net.Conn
		err  error
	)
	dialer := &net.Dialer{Timeout: s.cfg.connectTimeout}
	if s.cfg.tls != nil {
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: s.cfg.tls}).DialContext(ctx, "tcp", s.cfg.addr)
	} else {
		conn, err = dialer.DialContext(ctx, "tcp", s.cfg.addr)
	}
	if err != nil {
		return link{}, err
	}
	clientID := s.cfg.clientID
	if clientID == "" {
		clientID = "reeve-gateway-" + s.app.UUID
	}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID: clientID,
		Conn:     packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			s.handle(pr.Packet.Topic, pr.Packet.Payload, pr.Packet.Retain, time.Now())
			return true, nil
		}},
		OnClientError: func(err error) { s.log.Debug("mqtt: client error", "err", err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			s.log.Warn("mqtt: the broker disconnected the gateway", "reason_code", d.ReasonCode)
		},
	})
	cp := &paho.Connect{
		ClientID:   clientID,
		KeepAlive:  uint16(max(1, s.cfg.keepAlive/time.Second)),
		CleanStart: true,
	}
	if s.cfg.username != "" {
		cp.Username, cp.UsernameFlag = s.cfg.username, true
	}
	if s.cfg.password != "" {
		cp.Password, cp.PasswordFlag = []byte(s.cfg.password), true
	}
	ca, err := cli.Connect(ctx, cp)
	if err != nil {
		if ca != nil {
			return link{}, fmt.Errorf("connect: %w (reason code %#x)", err, ca.ReasonCode)
		}
		return link{}, fmt.Errorf("connect: %w", err)
	}
	// What the devices said before is stale until their retained
	// statuses, sent on subscribing, say it again.
	s.mu.Lock()
	for _, dev := range s.devices {
		dev.online = false
	}
	s.mu.Unlock()
	sa, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: s.topics.filter(), QoS: 1, NoLocal: true},
	}})
	if err == nil && (len(sa.Reasons) != 1 || sa.Reasons[0] > 1) {
		err = fmt.Errorf("refused (reason codes %v)", sa.Reasons)
	}
	if err != nil {
		_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
		return link{}, fmt.Errorf("subscribe to %s: %w", s.topics.filter(), err)
	}
	return link{cli: cli, conn: conn}, nil
}

// errLinkDown is why nothing can be sent while the broker is unreachable.
var errLinkDown = errors.New("the broker link is down")

// publish sends a QoS 1 message and waits for the broker's PUBACK.
func (s *session) publish(ctx context.Context, topic string, payload []byte) error {
	cli := s.client()
	if cli == nil {
		return fmt.Errorf("%w: %w", driver.ErrOffline, errLinkDown)
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel) // Close ends it
	defer stop()
	_, err := cli.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	switch {
	case err == nil:
		return nil
	case s.ctx.Err() != nil:
		return fmt.Errorf("mqtt driver: %w", driver.ErrNotOpen)
	case ctx.Err() != nil:
		return fmt.Errorf("publish to %s: %w", topic, ctx.Err())
	}
	return fmt.Errorf("publish to %s: %w: %w", topic, driver.ErrOffline, err)
}

// reachable checks that the device is known and online, and the link up.
func (s *session) reachable(id string) (*device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dev, ok := s.devices[id]
	switch {
	case !ok:
		return nil, fmt.Errorf("device %s: %w", id, driver.ErrUnknownDevice)
	case s.cli == nil:
		return nil, fmt.Errorf("device %s: %w: %w", id, driver.ErrOffline, errLinkDown)
	case !dev.online:
		return nil, fmt.Errorf("device %s: %w", id, driver.ErrOffline)
	}
	return dev, nil
}
