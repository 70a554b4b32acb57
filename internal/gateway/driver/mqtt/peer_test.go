package mqtt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// simPeer is simulated devices speaking the device side of docs/mqtt.md,
// each an MQTT client of its own. It implements drivertest.Peer.
type simPeer struct {
	addr   string // the broker, host:port
	topics topics
	app    string

	mu   sync.Mutex
	devs map[string]*simDevice
}

func newPeer(t testing.TB, b *testBroker, prefix, appUUID string) *simPeer {
	p := &simPeer{addr: b.addr, topics: newTopics(prefix, appUUID), app: appUUID, devs: map[string]*simDevice{}}
	t.Cleanup(p.close)
	return p
}

func (p *simPeer) close() {
	p.mu.Lock()
	devs := slices.Collect(maps.Values(p.devs))
	p.mu.Unlock()
	for _, d := range devs {
		d.shutdown()
	}
}

// device returns the simulated device id, made on first use.
func (p *simPeer) device(id string) *simDevice {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.devs[id]
	if !ok {
		short := p.app
		if len(short) > 8 {
			short = short[:8]
		}
		d = &simDevice{p: p, id: id, clientID: "sim-" + short + "-" + id, deviceType: "esp32",
			dieAfter: -1, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
		p.devs[id] = d
		go d.work()
	}
	return d
}

func (p *simPeer) get(t testing.TB, id string) *simDevice {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.devs[id]
	if !ok {
		t.Fatalf("no simulated device %s", id)
	}
	return d
}

// Add powers the device on running commit (a device added before keeps
// what it stored) and returns once its status is on the broker.
func (p *simPeer) Add(t testing.TB, localID, commit string) {
	t.Helper()
	d := p.device(localID)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.commit = commit
	if err := d.powerOn(); err != nil {
		t.Fatalf("device %s: power on: %v", localID, err)
	}
}

// Remove powers the device off: its connection drops, the broker
// publishes its will.
func (p *simPeer) Remove(t testing.TB, localID string) {
	d := p.get(t, localID)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.powerOff()
}

func (p *simPeer) Running(t testing.TB, localID string) string {
	d := p.get(t, localID)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.commit
}

func (p *simPeer) Restarts(t testing.TB, localID string) int {
	d := p.get(t, localID)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restarts
}

func (p *simPeer) Identified(t testing.TB, localID string) int {
	d := p.get(t, localID)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.identified
}

func (p *simPeer) Configured(t testing.TB, localID string) (env, config map[string]string) {
	d := p.get(t, localID)
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.env), maps.Clone(d.config)
}

func (p *simPeer) Log(t testing.TB, localID, message string) {
	t.Helper()
	d := p.get(t, localID)
	line, _ := json.Marshal(map[string]any{"ts": float64(time.Now().UnixMilli()) / 1000, "message": message, "system": false})
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.publish(p.topics.logs(localID), line, false); err != nil {
		t.Fatalf("device %s: log: %v", localID, err)
	}
}

// simDevice is one simulated microcontroller.
type simDevice struct {
	p          *simPeer
	id         string
	clientID   string
	deviceType string

	mu         sync.Mutex // guards all below
	cli        *paho.Client
	conn       net.Conn
	commit     string
	restarts   int
	identified int
	env        map[string]string
	config     map[string]string
	stage      *stage // the firmware being received; kept across power cycles, as in flash
	starts     []int  // what it answered each update command with (its next)
	received   []int  // the chunks it received, in order
	// Knobs for the driver's tests.
	refuse    string      // refuse updates for this reason
	corrupt   bool        // spoil the staged image: the sha256 check fails
	rollback  bool        // take the image, but come back running the old commit
	deaf      bool        // ignore update commands
	dropAcks  map[int]int // chunk → acknowledgements to leave out
	badCRC    map[int]int // chunk → acknowledgements with a wrong crc32
	dieAfter  int         // power off after storing this chunk; -1: never
	shutDown  bool
	qmu       sync.Mutex
	queue     []*paho.Publish
	wake      chan struct{}
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type stage struct {
	commit, sha      string
	size             int64
	chunkSize, total int
	buf              []byte
	next             int
}

func (d *simDevice) statusPayload() []byte {
	st := map[string]any{"online": true, "device_type": d.deviceType,
		"info": map[string]any{"model": "sim", "serial": d.id, "rssi": -60}}
	if d.commit != "" {
		st["commit"] = d.commit
	}
	b, _ := json.Marshal(st)
	return b
}

// powerOn connects with a will, subscribes and publishes its status.
// Called with d.mu held.
func (d *simDevice) powerOn() error {
	if d.shutDown {
		return fmt.Errorf("shut down")
	}
	d.powerOff()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", d.p.addr)
	if err != nil {
		return err
	}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID: d.clientID,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.enqueue(pr.Packet)
			return true, nil
		}},
	})
	will, _ := json.Marshal(map[string]any{"online": false})
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: d.clientID, CleanStart: true, KeepAlive: 30,
		WillMessage: &paho.WillMessage{Topic: d.p.topics.status(d.id), Payload: will, QoS: 1, Retain: true}}); err != nil {
		conn.Close()
		return fmt.Errorf("connect: %w", err)
	}
	if _, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: d.p.topics.cmd(d.id), QoS: 1},
		{Topic: d.p.topics.device(d.id, leafFw+"/+"), QoS: 1},
	}}); err != nil {
		conn.Close()
		<-cli.Done()
		return fmt.Errorf("subscribe: %w", err)
	}
	d.cli, d.conn = cli, conn
	if err := d.publish(d.p.topics.status(d.id), d.statusPayload(), true); err != nil {
		d.powerOff()
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// powerOff drops the connection without a DISCONNECT, as a board losing
// power does: the broker publishes the will. Called with d.mu held.
func (d *simDevice) powerOff() {
	if d.cli == nil {
		return
	}
	d.conn.Close()
	<-d.cli.Done()
	d.cli, d.conn = nil, nil
}

// reboot powers off and on. Called with d.mu held.
func (d *simDevice) reboot() {
	d.powerOff()
	d.restarts++
	_ = d.powerOn() // a device that cannot reach the broker stays offline

}

func (d *simDevice) publish(topic string, payload []byte, retain bool) error {
	if d.cli == nil {
		return fmt.Errorf("powered off")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := d.cli.Publish(ctx, &paho.Publish{Topic: topic, Payload: payload, QoS: 1, Retain: retain})
	return err
}

func (d *simDevice) publishJSON(topic string, v any) {
	b, _ := json.Marshal(v)
	_ = d.publish(topic, b, false) // a device whose link broke loses it
}

func (d *simDevice) enqueue(p *paho.Publish) {
	d.qmu.Lock()
	d.queue = append(d.queue, p)
	d.qmu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// work handles what the device receives, one message at a time.
func (d *simDevice) work() {
	defer close(d.done)
	for {
		select {
		case <-d.quit:
			return
		case <-d.wake:
		}
		for {
			d.qmu.Lock()
			if len(d.queue) == 0 {
				d.qmu.Unlock()
				break
			}
			m := d.queue[0]
			d.queue = d.queue[1:]
			d.qmu.Unlock()
			d.mu.Lock()
			d.handle(m)
			d.mu.Unlock()
		}
	}
}

func (d *simDevice) shutdown() {
	d.closeOnce.Do(func() {
		close(d.quit)
		<-d.done
		d.mu.Lock()
		d.shutDown = true
		d.powerOff()
		d.mu.Unlock()
	})
}

// handle is the device's firmware: what docs/mqtt.md asks of a device.
func (d *simDevice) handle(m *paho.Publish) {
	if d.cli == nil {
		return // received before a power cut: lost with the RAM
	}
	t := d.p.topics
	if m.Topic == t.cmd(d.id) {
		var c struct {
			Cmd       string            `json:"cmd"`
			Env       map[string]string `json:"env"`
			Config    map[string]string `json:"config"`
			Commit    string            `json:"commit"`
			Size      int64             `json:"size"`
			SHA256    string            `json:"sha256"`
			ChunkSize int               `json:"chunk_size"`
			Chunks    int               `json:"chunks"`
		}
		if err := json.Unmarshal(m.Payload, &c); err != nil {
			return
		}
		switch c.Cmd {
		case cmdRestart:
			d.reboot()
		case cmdIdentify:
			d.identified++
		case cmdConfigure:
			d.env, d.config = c.Env, c.Config
		case cmdUpdate:
			if d.deaf {
				return
			}
			if d.refuse != "" {
				d.publishJSON(t.result(d.id), map[string]any{"commit": c.Commit, "ok": false, "reason": d.refuse})
				return
			}
			if s := d.stage; s == nil || s.sha != c.SHA256 || s.chunkSize != c.ChunkSize || s.size != c.Size {
				d.stage = &stage{commit: c.Commit, sha: c.SHA256, size: c.Size, chunkSize: c.ChunkSize,
					total: int((c.Size + int64(c.ChunkSize) - 1) / int64(c.ChunkSize)), buf: make([]byte, c.Size)}
			}
			d.starts = append(d.starts, d.stage.next)
			d.publishJSON(t.ack(d.id), map[string]any{"commit": c.Commit, "next": d.stage.next})
			if d.stage.next == d.stage.total {
				d.install()
			}
		}
		return
	}
	num, ok := strings.CutPrefix(m.Topic, t.device(d.id, leafFw+"/"))
	if !ok {
		return
	}
	n, err := strconv.Atoi(num)
	s := d.stage
	if err != nil || s == nil {
		return
	}
	d.received = append(d.received, n)
	off := int64(n) * int64(s.chunkSize)
	if n > s.next || off+int64(len(m.Payload)) > s.size {
		d.publishJSON(t.ack(d.id), map[string]any{"commit": s.commit, "chunk": n, "next": s.next})
		return
	}
	copy(s.buf[off:], m.Payload)
	if n == s.next {
		s.next++
	}
	crc := crc32.ChecksumIEEE(m.Payload)
	if d.badCRC[n] > 0 {
		d.badCRC[n]--
		crc++
	}
	if d.dropAcks[n] > 0 {
		d.dropAcks[n]--
	} else {
		d.publishJSON(t.ack(d.id), map[string]any{"commit": s.commit, "chunk": n, "crc32": crc, "next": s.next})
	}
	if n == d.dieAfter {
		d.dieAfter = -1
		d.powerOff()
		return
	}
	if s.next == s.total {
		d.install()
	}
}

// install checks the staged image and, when it is right, runs it.
func (d *simDevice) install() {
	s, t := d.stage, d.p.topics
	d.stage = nil
	if d.corrupt && len(s.buf) > 0 {
		s.buf[0] ^= 0xff
	}
	sum := sha256.Sum256(s.buf)
	if hex.EncodeToString(sum[:]) != s.sha {
		d.publishJSON(t.result(d.id), map[string]any{"commit": s.commit, "ok": false, "reason": "sha256 mismatch"})
		return
	}
	d.publishJSON(t.result(d.id), map[string]any{"commit": s.commit, "ok": true})
	if !d.rollback {
		d.commit = s.commit
	}
	d.reboot()
}
