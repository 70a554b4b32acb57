package mqtt

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testBroker is the MQTT broker a test talks to: its own mosquitto on a
// free port, or the one REEVE_MQTT_BROKER names.
type testBroker struct {
	t    testing.TB
	url  string // for the driver's "broker" setting
	addr string // host:port, for the simulated devices
	bin  string // "" for a broker given by REEVE_MQTT_BROKER
	conf string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd exited
	out  *syncBuffer
}

// newBroker starts a broker for the test, or skips it (fails it under
// CI=true) when there is none to be had.
func newBroker(t testing.TB) *testBroker {
	t.Helper()
	if env := os.Getenv("REEVE_MQTT_BROKER"); env != "" {
		addr := env
		if _, rest, ok := strings.Cut(env, "://"); ok {
			addr = rest
		} else {
			env = "tcp://" + env
		}
		return &testBroker{t: t, url: env, addr: addr}
	}
	bin := mosquittoPath()
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but mosquitto is not installed and REEVE_MQTT_BROKER is not set: install Debian's mosquitto (.ci/run does)")
		}
		t.Skip("skipped until a real MQTT broker is reachable (required when CI=true): install mosquitto (apt-get install mosquitto) or set REEVE_MQTT_BROKER=tcp://host:port")
	}
	b := &testBroker{t: t, bin: bin}
	var err error
	for range 5 { // a free port can be taken between finding and binding it
		var port int
		if port, err = freePort(); err != nil {
			continue
		}
		b.addr = fmt.Sprintf("127.0.0.1:%d", port)
		b.url = "tcp://" + b.addr
		b.conf = filepath.Join(t.TempDir(), "mosquitto.conf")
		conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n", port)
		if err = os.WriteFile(b.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if err = b.start(); err == nil {
			t.Cleanup(b.stop)
			return b
		}
	}
	t.Fatalf("cannot start mosquitto: %v", err)
	return nil
}

func mosquittoPath() string {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs mosquitto and waits until it takes connections.
func (b *testBroker) start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := &syncBuffer{}
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exit := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exit) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.addr, time.Second)
		if err == nil {
			c.Close()
			b.cmd, b.exit, b.out = cmd, exit, out
			return nil
		}
		select {
		case <-exit:
			return fmt.Errorf("mosquitto exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exit
			return fmt.Errorf("mosquitto does not take connections on %s: %s", b.addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *testBroker) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Kill()
	<-b.exit
	b.cmd = nil
}

// restart stops the broker and starts it again on the same port; it
// forgets every retained message and session.
func (b *testBroker) restart(t testing.TB) {
	t.Helper()
	if b.bin == "" {
		msg := "this test restarts the broker, which it can only do with a mosquitto it started itself: unset REEVE_MQTT_BROKER (and install mosquitto)"
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: " + msg)
		}
		t.Skip("skipped until the test starts its own broker (required when CI=true): " + msg)
	}
	b.stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := b.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart mosquitto: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newUUID makes an app UUID, so that tests sharing a broker do not meet.
func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
