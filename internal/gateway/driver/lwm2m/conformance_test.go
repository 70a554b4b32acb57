package lwm2m

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve/internal/gateway/driver"
	"reeve.dev/reeve/internal/gateway/driver/drivertest"
)

// The conformance suite runs against lwm2m-node-lib's iotagent-lwm2m-client
// (npm lwm2m-node-lib@1.4.0), an LwM2M 1.0 client no one here wrote,
// driven over its stdin as a person would type at it: one client process
// per device boot.
//
// What the node client does by itself: registers (POST /rd with
// </3/0>,</5/0>,</32769/0>), de-registers (DELETE), answers reads of
// single resources in plain text (and 4.04 to object instance reads,
// which makes the driver read resource by resource), stores writes and
// acknowledges executes, printing each write and execute on stdout.
//
// What it cannot do, and the wrapper here (nodeDevice, "the device's
// firmware") does for it, reading that stdout and typing `set` commands:
//   - Object 5: on a Package URI write it sets State 1 and Update Result 0,
//     fetches the URI over HTTP, checks the download against the
//     #sha256= fragment the driver adds (uri_digest=sha256), reads the
//     release from the file's first line ("reeve firmware <commit>"), and
//     sets State 2, or State 0 and an Update Result 4 (fetch failed),
//     5 (digest mismatch), 6 (not a reeve firmware) or 7 (bad URI); an
//     empty Package URI resets State and Update Result to 0. On Execute
//     /5/0/2 in State 2 it sets State 3 and reboots into the new release,
//     coming back with /3/0/3 = the commit, State 0, Update Result 1.
//   - Reboot: on Execute /3/0/4 (and after an install) it de-registers
//     (`disconnect`), ends the process (`quit`) and boots a new one with
//     the device's state, which registers again from a new port, as a
//     rebooted device does. Restarts counts these reboots.
//   - Identify: Execute on /32769/0/0 (a private-range vendor resource,
//     the driver's "identify" setting) is counted.
//   - Configure: the JSON document written to /32769/0/1 (the
//     "configure" setting) is parsed into env and config.
//
// Logs are Unsupported: LwM2M has no log object.

// defaultNodeLib is where .ci/run installs lwm2m-node-lib; the
// REEVE_LWM2M_NODE_LIB environment variable names another directory
// holding node_modules.
const defaultNodeLib = "/opt/reeve-ci/lwm2m"

const nodeClientScript = "node_modules/lwm2m-node-lib/bin/iotagent-lwm2m-client.js"

// The vendor resources the conformance driver identifies and configures
// devices with.
const (
	identifyResource  = "/32769/0/0"
	configureResource = "/32769/0/1"
)

// nodeClient finds node and the client script: skipped when missing,
// failed under CI=true.
func nodeClient(t *testing.T) (node, script string) {
	t.Helper()
	dir := os.Getenv("REEVE_LWM2M_NODE_LIB")
	if dir == "" {
		dir = defaultNodeLib
	}
	node, nerr := exec.LookPath("node")
	script = filepath.Join(dir, nodeClientScript)
	_, serr := os.Stat(script)
	var missing []string
	if nerr != nil {
		missing = append(missing, "node (apt-get install nodejs npm)")
	}
	if serr != nil {
		missing = append(missing, fmt.Sprintf("lwm2m-node-lib's client %s (npm install --prefix %s lwm2m-node-lib@1.4.0; "+
			"REEVE_LWM2M_NODE_LIB names the directory holding node_modules)", script, dir))
	}
	if len(missing) > 0 {
		msg := "the LwM2M conformance peer is missing: " + strings.Join(missing, "; ")
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("skipped until node and lwm2m-node-lib are installed (required when CI=true): " + msg)
	}
	return node, script
}

func TestConformance(t *testing.T) {
	node, script := nodeClient(t)
	drivertest.Run(t, func(t *testing.T) drivertest.Setup {
		logs := &logBuffer{}
		d, err := NewDriver(map[string]string{
			"listen":     "127.0.0.1:0",
			"poll":       "200ms",
			"identify":   identifyResource,
			"configure":  configureResource,
			"uri_digest": "sha256",
		}, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("driver log:\n%s", logs)
			}
		})
		return drivertest.Setup{
			Driver:      d,
			Peer:        newNodePeer(t, node, script, d),
			App:         driver.App{ID: 1, UUID: "app-lwm2m", Name: "lwm2m-fleet", HostType: "node-lwm2m"},
			Unsupported: []string{"logs"},
		}
	})
}

// nodePeer is the devices, one nodeDevice each.
type nodePeer struct {
	t            *testing.T
	node, script string
	drv          *Driver
	quit         chan struct{} // closed at cleanup: every device stops

	mu   sync.Mutex
	devs map[string]*nodeDevice
}

func newNodePeer(t *testing.T, node, script string, d *Driver) *nodePeer {
	p := &nodePeer{t: t, node: node, script: script, drv: d, quit: make(chan struct{}), devs: map[string]*nodeDevice{}}
	t.Cleanup(func() {
		close(p.quit)
		p.mu.Lock()
		devs := slices.Collect(maps.Values(p.devs))
		p.mu.Unlock()
		for _, dv := range devs {
			<-dv.done
		}
	})
	return p
}

// nodeDevice is one device: its state (what its flash would keep) and
// the goroutine that plays its firmware around the node client process
// of its current boot.
type nodeDevice struct {
	p         *nodePeer
	id        string
	removeReq chan chan error
	done      chan struct{}

	mu         sync.Mutex
	commit     string
	state      int    // /5/0/3
	result     int    // /5/0/5
	pending    string // the release downloaded, installed at the next Update
	restarts   int
	identified int
	env, cfg   map[string]string
}

func (p *nodePeer) device(t testing.TB, id string) *nodeDevice {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	dv, ok := p.devs[id]
	if !ok {
		t.Fatalf("no device %s", id)
	}
	return dv
}

func (p *nodePeer) Add(t testing.TB, id, commit string) {
	t.Helper()
	dv := &nodeDevice{p: p, id: id, commit: commit, removeReq: make(chan chan error), done: make(chan struct{})}
	proc, err := dv.boot()
	if err != nil {
		t.Fatalf("boot %s: %v", id, err)
	}
	p.mu.Lock()
	p.devs[id] = dv
	p.mu.Unlock()
	go dv.run(proc)
}

func (p *nodePeer) Remove(t testing.TB, id string) {
	t.Helper()
	dv := p.device(t, id)
	reply := make(chan error, 1)
	select {
	case dv.removeReq <- reply:
		if err := <-reply; err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
	case <-dv.done:
	}
	<-dv.done
	p.mu.Lock()
	delete(p.devs, id)
	p.mu.Unlock()
}

func (p *nodePeer) Running(t testing.TB, id string) string {
	dv := p.device(t, id)
	dv.mu.Lock()
	defer dv.mu.Unlock()
	return dv.commit
}

func (p *nodePeer) Restarts(t testing.TB, id string) int {
	dv := p.device(t, id)
	dv.mu.Lock()
	defer dv.mu.Unlock()
	return dv.restarts
}

func (p *nodePeer) Identified(t testing.TB, id string) int {
	dv := p.device(t, id)
	dv.mu.Lock()
	defer dv.mu.Unlock()
	return dv.identified
}

func (p *nodePeer) Configured(t testing.TB, id string) (env, config map[string]string) {
	dv := p.device(t, id)
	dv.mu.Lock()
	defer dv.mu.Unlock()
	return maps.Clone(dv.env), maps.Clone(dv.cfg)
}

func (p *nodePeer) Log(t testing.TB, _, _ string) {
	t.Fatal("lwm2m: the node client has no log object")
}

// event is what the node client printed: "connected", "disconnected",
// "error" (value: its message), "write" (value: what was written),
// "execute".
type event struct {
	kind          string
	obj, inst, rs string
	value         string
}

func (e event) path() string { return "/" + e.obj + "/" + e.inst + "/" + e.rs }

// nodeProc is one node client process: one boot of the device.
type nodeProc struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	ev       chan event
	abandon  chan struct{} // closed when its owner stops reading ev
	exited   chan struct{}
	killOnce sync.Once

	mu  sync.Mutex
	out bytes.Buffer // what it printed, for failures
}

// boot starts a node client with the device's state and waits until it
// registered.
func (dv *nodeDevice) boot() (*nodeProc, error) {
	addr, ok := dv.p.drv.Addr().(*net.UDPAddr)
	if !ok {
		return nil, errors.New("the driver is not serving")
	}
	cmd := exec.Command(dv.p.node, dv.p.script)
	proc := &nodeProc{cmd: cmd, ev: make(chan event, 256), abandon: make(chan struct{}), exited: make(chan struct{})}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = proc
	proc.stdin = stdin
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go proc.read(stdout)
	dv.mu.Lock()
	cmds := []string{
		"create /3/0",
		"set /3/0 0 Reeve",
		"set /3/0 1 lwm2m-node-lib",
		"set /3/0 2 SN-" + dv.id,
		`set /3/0 4 ""`,
		"set /3/0 17 node-lwm2m",
		"create /5/0",
		`set /5/0 1 ""`,
		fmt.Sprintf("set /5/0 3 %d", dv.state),
		fmt.Sprintf("set /5/0 5 %d", dv.result),
		"create /32769/0",
		`set /32769/0 0 ""`,
		`set /32769/0 1 ""`,
	}
	if dv.commit != "" {
		cmds = append(cmds, "set /3/0 3 "+dv.commit)
	}
	dv.mu.Unlock()
	cmds = append(cmds, fmt.Sprintf(`connect %s %d %s ""`, addr.IP, addr.Port, dv.id))
	for _, c := range cmds {
		if err := proc.send(c); err != nil {
			proc.kill()
			return nil, err
		}
	}
	if _, err := dv.await(proc, "connected"); err != nil {
		proc.kill()
		return nil, err
	}
	return proc, nil
}

// prompt is what the node client prints before reading a command.
const prompt = "LWM2M-Client>"

// read turns the client's output into events.
func (proc *nodeProc) read(stdout io.Reader) {
	defer func() {
		close(proc.ev)
		_ = proc.cmd.Wait()
		close(proc.exited)
	}()
	emit := func(e event) bool {
		select {
		case proc.ev <- e:
			return true
		case <-proc.abandon:
			return false
		}
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var cur event
	for sc.Scan() {
		_, _ = proc.Write([]byte(sc.Text() + "\n"))
		line := strings.TrimSpace(strings.ReplaceAll(sc.Text(), prompt, ""))
		field := func(name string) (string, bool) {
			v, ok := strings.CutPrefix(line, "-> "+name+":")
			return strings.TrimPrefix(v, " "), ok
		}
		var e *event
		switch line {
		case "Connected:":
			e = &event{kind: "connected"}
		case "Disconnected:":
			e = &event{kind: "disconnected"}
		case "Error:":
			cur = event{kind: "error"}
		case "Value written:":
			cur = event{kind: "write"}
		case "Command executed:":
			cur = event{kind: "execute"}
		}
		if v, ok := field("ObjectType"); ok {
			cur.obj = v
		} else if v, ok := field("ObjectId"); ok {
			cur.inst = v
		} else if v, ok := field("ResourceId"); ok {
			cur.rs = v
		} else if v, ok := field("Written value"); ok && cur.kind == "write" {
			cur.value = v
			e = &cur
		} else if _, ok := field("Command arguments"); ok && cur.kind == "execute" {
			e = &cur
		} else if v, ok := strings.CutPrefix(line, "Message: "); ok && cur.kind == "error" {
			cur.value = v
			e = &cur
		}
		if e != nil {
			if !emit(*e) {
				return
			}
			cur = event{}
		}
	}
}

func (proc *nodeProc) send(line string) error {
	_, err := io.WriteString(proc.stdin, line+"\n")
	return err
}

// Write keeps what the process printed.
func (proc *nodeProc) Write(b []byte) (int, error) {
	proc.mu.Lock()
	defer proc.mu.Unlock()
	return proc.out.Write(b)
}

func (proc *nodeProc) output() string {
	proc.mu.Lock()
	defer proc.mu.Unlock()
	return proc.out.String()
}

// kill ends the process and waits for it.
func (proc *nodeProc) kill() {
	proc.killOnce.Do(func() {
		close(proc.abandon)
		_ = proc.cmd.Process.Kill()
	})
	<-proc.exited
}

// await waits for an event of that kind, handing the device the others.
func (dv *nodeDevice) await(proc *nodeProc, kind string) (event, error) {
	timer := time.NewTimer(drivertest.Timeout)
	defer timer.Stop()
	for {
		select {
		case <-dv.p.quit:
			return event{}, errors.New("the test ended")
		case <-timer.C:
			return event{}, fmt.Errorf("no %q from the node client after %s; it printed:\n%s", kind, drivertest.Timeout, proc.output())
		case e, ok := <-proc.ev:
			if !ok {
				return event{}, fmt.Errorf("the node client exited; it printed:\n%s", proc.output())
			}
			switch e.kind {
			case kind:
				return e, nil
			case "error":
				return event{}, fmt.Errorf("the node client failed: %s", e.value)
			}
		}
	}
}

// run is the device's firmware: it reacts to what the server did, for as
// long as the device lives.
func (dv *nodeDevice) run(proc *nodeProc) {
	defer close(dv.done)
	defer func() {
		if proc != nil {
			proc.kill()
		}
	}()
	for {
		select {
		case <-dv.p.quit:
			return
		case reply := <-dv.removeReq:
			reply <- dv.shutdown(proc)
			proc = nil
			return
		case e, ok := <-proc.ev:
			if !ok {
				dv.p.t.Errorf("device %s: the node client exited; it printed:\n%s", dv.id, proc.output())
				proc = nil
				return
			}
			next, err := dv.handle(proc, e)
			if err != nil {
				select {
				case <-dv.p.quit:
				default:
					dv.p.t.Errorf("device %s: %v", dv.id, err)
				}
				return
			}
			proc = next
		}
	}
}

// handle acts on one event; a reboot gives a new process.
func (dv *nodeDevice) handle(proc *nodeProc, e event) (*nodeProc, error) {
	switch {
	case e.kind == "write" && e.path() == "/5/0/1":
		return proc, dv.download(proc, e.value)
	case e.kind == "execute" && e.path() == "/5/0/2":
		dv.mu.Lock()
		ready := dv.state == 2 && dv.pending != ""
		dv.mu.Unlock()
		if !ready {
			return proc, nil // nothing downloaded: nothing to install
		}
		if err := dv.set(proc, "/5/0", 3, "3"); err != nil {
			return nil, err
		}
		return dv.reboot(proc, true)
	case e.kind == "execute" && e.path() == "/3/0/4":
		return dv.reboot(proc, false)
	case e.kind == "execute" && e.path() == identifyResource:
		dv.mu.Lock()
		dv.identified++
		dv.mu.Unlock()
	case e.kind == "write" && e.path() == configureResource:
		var doc configDoc
		if err := json.Unmarshal([]byte(e.value), &doc); err != nil {
			return proc, fmt.Errorf("configuration %q: %w", e.value, err)
		}
		dv.mu.Lock()
		dv.env, dv.cfg = doc.Env, doc.Config
		dv.mu.Unlock()
	}
	return proc, nil
}

// set types `set obj res value` and mirrors Object 5 in the device state.
func (dv *nodeDevice) set(proc *nodeProc, obj string, res int, v string) error {
	if obj == "/5/0" {
		dv.mu.Lock()
		switch res {
		case 3:
			fmt.Sscan(v, &dv.state)
		case 5:
			fmt.Sscan(v, &dv.result)
		}
		dv.mu.Unlock()
	}
	return proc.send(fmt.Sprintf("set %s %d %s", obj, res, v))
}

// download plays Object 5's download on a Package URI write.
func (dv *nodeDevice) download(proc *nodeProc, uri string) error {
	if uri == "" {
		if err := dv.set(proc, "/5/0", 3, "0"); err != nil {
			return err
		}
		return dv.set(proc, "/5/0", 5, "0")
	}
	if err := dv.set(proc, "/5/0", 5, "0"); err != nil {
		return err
	}
	if err := dv.set(proc, "/5/0", 3, "1"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), drivertest.Timeout)
	defer cancel()
	go func() {
		select {
		case <-dv.p.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	commit, err := fetchFirmware(ctx, uri)
	if err != nil {
		var fe *fetchError
		result := 4
		if errors.As(err, &fe) {
			result = fe.result
		}
		if err := dv.set(proc, "/5/0", 3, "0"); err != nil {
			return err
		}
		return dv.set(proc, "/5/0", 5, fmt.Sprint(result))
	}
	dv.mu.Lock()
	dv.pending = commit
	dv.mu.Unlock()
	return dv.set(proc, "/5/0", 3, "2")
}

// shutdown de-registers and ends the process, as a device powering off
// cleanly.
func (dv *nodeDevice) shutdown(proc *nodeProc) error {
	defer proc.kill()
	if err := proc.send("disconnect"); err != nil {
		return err
	}
	if _, err := dv.await(proc, "disconnected"); err != nil {
		return err
	}
	_ = proc.send("quit")
	select {
	case <-proc.exited:
	case <-time.After(drivertest.Timeout):
	}
	return nil
}

// reboot restarts the device, into the downloaded release when install.
func (dv *nodeDevice) reboot(proc *nodeProc, install bool) (*nodeProc, error) {
	dv.mu.Lock()
	dv.restarts++
	dv.mu.Unlock()
	if err := dv.shutdown(proc); err != nil {
		return nil, err
	}
	dv.mu.Lock()
	if install {
		dv.commit, dv.pending = dv.pending, ""
		dv.state, dv.result = 0, 1
	}
	dv.mu.Unlock()
	return dv.boot()
}

// fetchError is a download that failed, with the Update Result it sets.
type fetchError struct {
	result int
	err    error
}

func (e *fetchError) Error() string { return fmt.Sprintf("update result %d: %v", e.result, e.err) }

// fetchFirmware downloads a reeve firmware from a Package URI and returns
// the release it holds, checking the #sha256= fragment when there is one.
func fetchFirmware(ctx context.Context, uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", &fetchError{7, err}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", &fetchError{9, fmt.Errorf("scheme %q", u.Scheme)}
	}
	want, _ := strings.CutPrefix(u.Fragment, "sha256=")
	u.Fragment = ""
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", &fetchError{7, err}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", &fetchError{4, err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", &fetchError{7, fmt.Errorf("GET %s: %s", u, resp.Status)}
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", &fetchError{4, err}
	}
	if want != "" && sha256Hex(data) != want {
		return "", &fetchError{5, fmt.Errorf("sha256 %s, want %s", sha256Hex(data), want)}
	}
	first, _, _ := bytes.Cut(data, []byte("\n"))
	commit, ok := strings.CutPrefix(string(first), "reeve firmware ")
	if !ok || commit == "" {
		return "", &fetchError{6, errors.New("not a reeve firmware")}
	}
	return commit, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
