package agentd_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/compose"
	"reeve.dev/reeve/internal/localapi"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/testimage"
)

// TestCrashSafety kills `reeve agent` (a real subprocess, SIGKILL) while it
// applies a new release, restarts it on the same data directory without
// sending the target again, and checks after every convergence that the
// device is exactly the target: one container per service with the target's
// definition and release, no orphans, every line the services wrote to their
// shared volume still there, no leftover helpers, backup volumes or update
// locks.
//
// The kill comes right after SetTarget returns, after a random delay
// (0–3 s), when the agent logs its k-th step, or 0–40 ms after it logs the
// first step of a kind (createNetwork, kill, handover, …); in one round of
// four the restarted agent is killed once more while it recovers. The
// choices come from a seeded math/rand; the seed is logged.
//
// REEVE_CRASH_ROUNDS sets the number of rounds (default 20, 3 with -short);
// REEVE_CRASH_SEED replays the choices of a logged seed (the engine's timing
// still varies).
func TestCrashSafety(t *testing.T) {
	testimage.RequireDocker(t)
	rounds := 20
	if testing.Short() {
		rounds = 3
	}
	if s := os.Getenv("REEVE_CRASH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("REEVE_CRASH_ROUNDS=%q: want a number >= 1", s)
		}
		rounds = n
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("REEVE_CRASH_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("REEVE_CRASH_SEED=%q: want a number", s)
		}
		seed = n
	}
	t.Logf("crash test: %d rounds, seed %d (REEVE_CRASH_SEED=%d replays the kill choices)", rounds, seed, seed)

	c := newCrashRun(t, mrand.New(mrand.NewPCG(uint64(seed), 0x7265657665)))
	start := time.Now()
	done := 0
	for r := range rounds {
		c.round(r)
		done++
		if t.Failed() {
			t.Logf("stopping after the failed round %d; agent logs are in %s", r, c.logDir)
			break
		}
	}
	t.Logf("crash test: %d of %d rounds in %s", done, rounds, time.Since(start).Round(100*time.Millisecond))
}

// crashRun is one run of TestCrashSafety: the reeve binary, the images, one
// data directory and one namespace shared by every agent process it starts.
type crashRun struct {
	t       *testing.T
	ctx     context.Context
	rng     *mrand.Rand
	bin     string
	dataDir string
	logDir  string
	ns      string
	app     string // app name; its UUID is derived from it
	uuid    string
	images  [3]string // svc:v1, v2, v3
	cache   [2]string // cache:c1, c2 (a separate repository, so delete-then-download has an image to delete)
	rt      *docker.Runtime
	engine  *client.Client

	mu     sync.Mutex
	starts []events.Message // container start events of the app, in engine order
	proc   *agentProc       // the agent running now, if any

	// lastStarts and lastWrites are the volume's files at the previous
	// convergence: each must be a prefix of the next.
	lastStarts, lastWrites string
	releases               map[string]crashRelease // by commit
}

// crashRelease is the target of one round.
type crashRelease struct {
	round  int
	yml    string
	commit string
	rel    reeve.Release
	writes map[string]string // service → the line TESTPROG_WRITE appends
}

func newCrashRun(t *testing.T, rng *mrand.Rand) *crashRun {
	ctx, cancel := context.WithCancel(context.Background())
	suffix := randomHex(4)
	c := &crashRun{
		t:        t,
		ctx:      ctx,
		rng:      rng,
		dataDir:  t.TempDir(),
		ns:       "crash-" + suffix,
		app:      "crash" + suffix,
		releases: map[string]crashRelease{},
	}
	c.uuid, _ = localapi.LocalApp(c.app, reeve.Release{}, "x")
	// The agents' logs are kept when the test fails.
	logDir, err := os.MkdirTemp("", "reeve-crash-logs-*")
	if err != nil {
		t.Fatal(err)
	}
	c.logDir = logDir
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent logs kept in %s", logDir)
			return
		}
		os.RemoveAll(logDir)
	})
	t.Logf("namespace %s, app %s (%s), data %s, agent logs %s", c.ns, c.app, c.uuid, c.dataDir, c.logDir)

	c.bin = buildReeve(t)
	reg := testimage.StartRegistry(t)
	for i := range c.images {
		v := fmt.Sprintf("v%d", i+1)
		c.images[i] = reg.Push(t, "crash/svc", v, map[string]string{"/version": v})
	}
	for i := range c.cache {
		v := fmt.Sprintf("c%d", i+1)
		c.cache[i] = reg.Push(t, "crash/cache", v, map[string]string{"/version": v})
	}

	c.rt, err = docker.New(ctx, docker.Options{Namespace: c.ns})
	if err != nil {
		t.Fatal(err)
	}
	c.engine, err = client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after StartRegistry's cleanup, so it runs before it.
	t.Cleanup(func() {
		c.mu.Lock()
		p := c.proc
		c.mu.Unlock()
		if p != nil {
			p.kill()
		}
		cancel()
		c.cleanup(reg.Host())
		c.rt.Close()
		c.engine.Close()
	})
	c.watchStarts()
	return c
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// buildReeve builds the reeve binary (static) into a temp dir.
func buildReeve(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "reeve")
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", bin, "reeve.dev/reeve/cmd/reeve")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build reeve: %v\n%s", err, out)
	}
	t.Logf("built %s in %s", bin, time.Since(start).Round(100*time.Millisecond))
	return bin
}

// watchStarts records every start of a container of the app, from now on.
// The engine keeps only its last 256 events, so they are streamed, not
// queried afterwards.
func (c *crashRun) watchStarts() {
	res := c.engine.Events(c.ctx, client.EventsListOptions{Filters: client.Filters{}.
		Add("type", "container").
		Add("event", "start").
		Add("label", docker.LabelAppUUID+"="+c.uuid)})
	go func() {
		for {
			select {
			case m := <-res.Messages:
				c.mu.Lock()
				c.starts = append(c.starts, m)
				c.mu.Unlock()
			case err := <-res.Err:
				if c.ctx.Err() == nil {
					// Losing events would make every later check wrong.
					c.t.Errorf("engine event stream ended: %v", err)
				}
				return
			}
		}
	}()
}

// release returns the target of round r. Every round changes the images and
// environment of api, worker, web and cache; db changes every second round,
// the network back every third and the volume's definition every fourth
// (so its data is copied through a backup volume).
func (c *crashRun) release(r int) crashRelease {
	dbGen, netGen, volGen := r/2, r/3, r/4
	handover := ""
	if r%2 == 0 {
		// Odd rounds never signal: the hand-over times out.
		handover = `
      TESTPROG_HANDOVER: /tmp/reeve/handover-complete
      TESTPROG_HANDOVER_AFTER: 300ms`
	}
	writes := map[string]string{
		"db":     fmt.Sprintf("db gen%d", dbGen),
		"api":    fmt.Sprintf("api round%d", r),
		"worker": fmt.Sprintf("worker round%d", r),
		"web":    fmt.Sprintf("web round%d", r),
	}
	yml := fmt.Sprintf(`# crash test round %[1]d
services:
  db:
    image: %[2]s
    environment:
      TESTPROG_STARTLOG: /data/starts
      TESTPROG_WRITE: /data/writes=%[3]s
      TESTPROG_HEALTHY_AFTER: 200ms
    healthcheck:
      test: ["CMD", "/testprog", "health"]
      interval: 200ms
      retries: 100
    volumes: [data:/data]
    networks: [back]
  api:
    image: %[4]s
    environment:
      TESTPROG_STARTLOG: /data/starts
      TESTPROG_WRITE: /data/writes=%[5]s
    depends_on:
      db:
        condition: service_healthy
    volumes: [data:/data]
    networks: [back, front]
  worker:
    image: %[6]s
    environment:
      TESTPROG_STARTLOG: /data/starts
      TESTPROG_WRITE: /data/writes=%[7]s
    labels:
      io.reeve.update.strategy: kill-then-download
    depends_on: [api]
    volumes: [data:/data]
    networks: [back]
  web:
    image: %[4]s
    environment:
      TESTPROG_STARTLOG: /data/starts
      TESTPROG_WRITE: /data/writes=%[8]s%[9]s
    labels:
      io.reeve.update.strategy: hand-over
      io.reeve.update.handover-timeout: "1000"
    depends_on: [api]
    volumes: [data:/data]
    networks: [front]
  cache:
    image: %[10]s
    environment:
      RELEASE: round%[1]d
    labels:
      io.reeve.update.strategy: delete-then-download
    networks: [back]
networks:
  back:
    labels:
      gen: "%[11]d"
  front: {}
volumes:
  data:
    labels:
      gen: "%[12]d"
`, r, c.images[dbGen%3], writes["db"], c.images[r%3], writes["api"], c.images[(r+1)%3], writes["worker"],
		writes["web"], handover, c.cache[r%2], netGen, volGen)
	rel, err := compose.Load(c.ctx, []byte(yml), compose.Options{ProjectName: c.app})
	if err != nil {
		c.t.Fatalf("round %d: compose: %v\n%s", r, err, yml)
	}
	cr := crashRelease{round: r, yml: yml, commit: compose.Commit([]byte(yml)), rel: rel, writes: writes}
	c.releases[cr.commit] = cr
	return cr
}

// Kill moments.
const (
	killAfterSet   = iota // right after SetTarget returns
	killAfterDelay        // 0–3 s after SetTarget returned
	killAtStep            // when the agent logs its k-th step (k 1–12), at the latest after 3 s
	killAtAction          // 0–40 ms after the agent logs the first step of a kind (createNetwork, kill, …), at the latest after 3 s
)

// killActions are the steps killAtAction aims at: those that change the
// engine's state in more than one request, or whose effect the next agent
// has to recognise.
var killActions = []string{"createNetwork", "removeNetwork", "createVolume", "kill", "start", "handover", "removeImage", "takeLock", "updateMetadata"}

func (c *crashRun) round(r int) {
	t := c.t
	rel := c.release(r)
	roundStart := time.Now()

	p := c.startAgent(r, "a")
	info, err := p.client.DeviceInfo(c.ctx)
	if err != nil {
		t.Fatalf("round %d: device info: %v", r, err)
	}
	ts, _, err := p.client.Target(c.ctx)
	if err != nil {
		t.Fatalf("round %d: target: %v", r, err)
	}
	uuid, app := localapi.LocalApp(c.app, rel.rel, rel.commit)
	version, err := p.client.SetTarget(c.ctx, localapi.WithApp(ts, info.UUID, info.Name, uuid, app))
	if err != nil {
		t.Fatalf("round %d: set target: %v", r, err)
	}
	setAt := time.Now()

	var moment string
	switch mode := c.rng.IntN(4); mode {
	case killAfterSet:
		moment = "right after SetTarget returned"
	case killAfterDelay:
		d := time.Duration(c.rng.Int64N(int64(3 * time.Second)))
		time.Sleep(time.Until(setAt.Add(d)))
		moment = fmt.Sprintf("%s after SetTarget", d.Round(time.Millisecond))
	case killAtStep:
		k := 1 + c.rng.IntN(12)
		if p.waitFor(func(steps []string) bool { return len(steps) >= k }, setAt.Add(3*time.Second)) {
			moment = fmt.Sprintf("at step %d", k)
		} else {
			moment = fmt.Sprintf("at step %d, not reached: at 3 s", k)
		}
	case killAtAction:
		action := killActions[c.rng.IntN(len(killActions))]
		// Up to 40 ms later: while the step's engine requests are in
		// flight.
		after := time.Duration(c.rng.Int64N(int64(40 * time.Millisecond)))
		if p.waitFor(func(steps []string) bool {
			return slices.ContainsFunc(steps, func(s string) bool { return strings.HasPrefix(s, action+" ") })
		}, setAt.Add(3*time.Second)) {
			time.Sleep(after)
			moment = fmt.Sprintf("%s after the first %s", after.Round(time.Millisecond), action)
		} else {
			moment = fmt.Sprintf("at the first %s, none: at 3 s", action)
		}
	}
	p.kill()
	moment += fmt.Sprintf(" (at +%s, %d steps logged, %s)",
		time.Since(setAt).Round(time.Millisecond), p.stepCount(), p.lastSteps(3))

	// Restart without sending the target again; one round in four kills
	// the recovering agent once more.
	p = c.startAgent(r, "b")
	if c.rng.IntN(4) == 0 {
		d := time.Duration(c.rng.Int64N(int64(1500 * time.Millisecond)))
		time.Sleep(d)
		p.kill()
		moment += fmt.Sprintf("; recovering agent killed after %s (%d steps logged)", d.Round(time.Millisecond), p.stepCount())
		p = c.startAgent(r, "c")
	}
	recoverAt := time.Now()

	// The target survived the kill.
	got, gotVersion, err := p.client.Target(c.ctx)
	if err != nil {
		t.Fatalf("round %d: target after restart: %v", r, err)
	}
	if gotVersion != version {
		t.Errorf("round %d: after the kill the agent has target version %d, want %d (SetTarget had returned it)", r, gotVersion, version)
	}
	if a, ok := got[info.UUID].Apps[uuid]; !ok {
		t.Errorf("round %d: after the kill the target lacks app %s", r, c.app)
	} else if commit, _, _ := a.Release(); commit != rel.commit {
		t.Errorf("round %d: after the kill the target has release %s, want %s", r, commit, rel.commit)
	}

	st, ok := c.waitApplied(p, version, 3*time.Minute)
	if !ok {
		t.Errorf("round %d (killed %s): not converged within 3 min: state %s, last error %q, steps %v, services %s; agent log: %s",
			r, moment, st.AppState, st.LastError, st.Steps, servicesText(st.Services), p.logPath)
		c.dumpLogs(r)
		return
	}
	converged := time.Since(recoverAt)
	c.check(r, rel)
	if t.Failed() {
		c.dumpLogs(r)
	}
	p.kill() // the next round starts its own agent
	t.Logf("round %2d: killed %s; converged on release %s (version %d: %s) %s after the restart; round took %s",
		r, moment, rel.commit, version, servicesText(st.Services), converged.Round(10*time.Millisecond), time.Since(roundStart).Round(10*time.Millisecond))
}

func servicesText(ss []agent.ServiceStatus) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, s.Service+" "+s.Status)
	}
	return strings.Join(parts, ", ")
}

// waitApplied waits until the agent reports version applied.
func (c *crashRun) waitApplied(p *agentProc, version int64, timeout time.Duration) (agent.Status, bool) {
	deadline := time.Now().Add(timeout)
	var st localapi.StatusResponse
	for time.Now().Before(deadline) {
		var err error
		st, err = p.client.Status(c.ctx)
		if err == nil && st.TargetVersion >= version && st.AppState == agent.AppStateApplied {
			return st.Status, true
		}
		if p.exited() {
			c.t.Errorf("the agent exited while converging; log %s:\n%s", p.logPath, tail(p.logPath, 40))
			return st.Status, false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return st.Status, false
}

// check asserts that the device is exactly the target of round r.
func (c *crashRun) check(r int, rel crashRelease) {
	t := c.t
	snap, err := c.rt.Snapshot(c.ctx)
	if err != nil {
		t.Fatalf("round %d: snapshot: %v", r, err)
	}
	bySvc := map[string][]reeve.ServiceState{}
	for _, ctr := range snap.Containers {
		if ctr.AppUUID != c.uuid {
			t.Errorf("round %d: container %s of another app (%s, service %s) in the namespace", r, short12(ctr.ID), ctr.AppUUID, ctr.ServiceName)
			continue
		}
		bySvc[ctr.ServiceName] = append(bySvc[ctr.ServiceName], ctr)
	}
	for name, svc := range rel.rel.Services {
		cs := bySvc[name]
		delete(bySvc, name)
		if len(cs) != 1 {
			t.Errorf("round %d: service %s has %d containers, want 1: %s", r, name, len(cs), containersText(cs))
			continue
		}
		ctr := cs[0]
		if ctr.ConfigHash != svc.ConfigHash() {
			t.Errorf("round %d: service %s runs config %s, want %s (container %s, release %s)", r, name, ctr.ConfigHash, svc.ConfigHash(), short12(ctr.ID), ctr.Commit)
		}
		if ctr.Commit != rel.commit {
			t.Errorf("round %d: service %s is on release %s, want %s", r, name, ctr.Commit, rel.commit)
		}
		if ctr.Status != reeve.StatusRunning {
			t.Errorf("round %d: service %s is %s, want running", r, name, ctr.Status)
		}
	}
	for name, cs := range bySvc {
		t.Errorf("round %d: orphan containers of service %s, which is not in the release: %s", r, name, containersText(cs))
	}

	nets := map[string]string{}
	for _, n := range snap.Networks {
		if n.AppUUID != c.uuid {
			continue
		}
		if _, dup := nets[n.Name]; dup {
			t.Errorf("round %d: network %s exists more than once", r, n.Name)
		}
		nets[n.Name] = n.ConfigHash
	}
	// The engine may hold networks of one name twice (API 1.41 does not
	// refuse a second); the snapshot need not show both.
	engineNets, err := c.engine.NetworkList(c.ctx, client.NetworkListOptions{Filters: client.Filters{}.
		Add("label", docker.LabelAppUUID+"="+c.uuid)})
	if err != nil {
		t.Fatal(err)
	}
	perName := map[string][]string{}
	for _, n := range engineNets.Items {
		perName[n.Name] = append(perName[n.Name], short12(n.ID))
	}
	for name, ids := range perName {
		if len(ids) > 1 {
			t.Errorf("round %d: the engine holds %d networks named %s: %v", r, len(ids), name, ids)
		}
	}
	for name, n := range rel.rel.Networks {
		if h, ok := nets[name]; !ok {
			t.Errorf("round %d: network %s missing", r, name)
		} else if h != n.ConfigHash() {
			t.Errorf("round %d: network %s has definition %s, want %s", r, name, h, n.ConfigHash())
		}
		delete(nets, name)
	}
	for name := range nets {
		t.Errorf("round %d: network %s left over", r, name)
	}
	vols := 0
	for _, v := range snap.Volumes {
		if v.AppUUID != c.uuid {
			continue
		}
		vols++
		if want := rel.rel.Volumes[v.Name]; v.Name != "data" || v.ConfigHash != want.ConfigHash() {
			t.Errorf("round %d: volume %s with definition %s, want data with %s", r, v.Name, v.ConfigHash, want.ConfigHash())
		}
	}
	if vols != 1 {
		t.Errorf("round %d: %d volumes of the app, want 1 (data)", r, vols)
	}

	c.checkLeftovers(r)
	c.checkLocks(r)
	c.checkVolumeData(r)
}

func containersText(cs []reeve.ServiceState) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s (release %s, config %.8s, %s, created %s)", short12(c.ID), c.Commit, c.ConfigHash, c.Status, c.CreatedAt.Format("15:04:05.000")))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

func short12(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// checkLeftovers looks for helper containers that mount the app's volume
// and for backup volumes of it.
func (c *crashRun) checkLeftovers(r int) {
	t := c.t
	helpers, err := c.engine.ContainerList(c.ctx, client.ContainerListOptions{All: true,
		Filters: client.Filters{}.Add("label", docker.LabelHelper+"=true")})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range helpers.Items {
		for _, m := range h.Mounts {
			if strings.Contains(m.Name, c.uuid) {
				t.Errorf("round %d: leftover helper container %s (%v) mounting %s", r, short12(h.ID), h.Names, m.Name)
			}
		}
	}
	backups, err := c.engine.VolumeList(c.ctx, client.VolumeListOptions{
		Filters: client.Filters{}.Add("label", docker.LabelBackupOf)})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range backups.Items {
		if strings.Contains(v.Name, c.uuid) || strings.Contains(v.Labels[docker.LabelBackupOf], c.uuid) {
			t.Errorf("round %d: leftover backup volume %s (of %s)", r, v.Name, v.Labels[docker.LabelBackupOf])
		}
	}
}

// checkLocks asserts that no update lock file is left under <data>/locks.
func (c *crashRun) checkLocks(r int) {
	root := filepath.Join(c.dataDir, "locks")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "updates.lock" {
			c.t.Errorf("round %d: update lock left: %s", r, path)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		c.t.Errorf("round %d: walk %s: %v", r, root, err)
	}
}

// checkVolumeData compares the volume's files with the container starts
// the engine reported: /data/starts holds "<hostname> <time>" per start
// (the hostname is the container ID's first 12 characters), /data/writes
// the service's TESTPROG_WRITE line per start. Every start must have its
// line, no line may be lost since the last round (the old content is a
// prefix of the new), and lines are in time order.
func (c *crashRun) checkVolumeData(r int) {
	t := c.t
	var starts, writes string
	var wantIDs, gotIDs, wantWrites, gotWrites []string
	var mismatch string
	// A container the engine reported started may not have written yet,
	// and an event may trail its line: retry for a few seconds.
	deadline := time.Now().Add(10 * time.Second)
	for {
		starts, writes = c.volumeFile("starts"), c.volumeFile("writes")
		c.mu.Lock()
		evs := slices.Clone(c.starts)
		c.mu.Unlock()
		wantIDs, wantWrites = nil, nil
		for _, e := range evs {
			w := c.expectedWrite(e)
			if w == "" {
				continue // a service without the volume (cache)
			}
			wantIDs = append(wantIDs, short12(e.Actor.ID))
			wantWrites = append(wantWrites, w)
		}
		gotIDs, gotWrites = nil, nil
		for _, l := range lines(starts) {
			gotIDs = append(gotIDs, strings.Fields(l)[0])
		}
		gotWrites = lines(writes)
		mismatch = ""
		if !sameMultiset(wantIDs, gotIDs) {
			mismatch = fmt.Sprintf("starts file has lines of %v, the engine reported starts of %v", gotIDs, wantIDs)
		} else if !sameMultiset(wantWrites, gotWrites) {
			mismatch = fmt.Sprintf("writes file has %q, the engine's starts say %q", gotWrites, wantWrites)
		}
		if mismatch == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if mismatch != "" {
		t.Errorf("round %d: volume data does not match the container starts: %s", r, mismatch)
	}
	if !strings.HasPrefix(starts, c.lastStarts) {
		t.Errorf("round %d: lines lost from /data/starts: before %q, now %q", r, c.lastStarts, starts)
	}
	if !strings.HasPrefix(writes, c.lastWrites) {
		t.Errorf("round %d: lines lost from /data/writes: before %q, now %q", r, c.lastWrites, writes)
	}
	var prev time.Time
	for i, l := range lines(starts) {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Errorf("round %d: /data/starts line %d is %q", r, i+1, l)
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, f[1])
		if err != nil {
			t.Errorf("round %d: /data/starts line %d: %v", r, i+1, err)
			continue
		}
		// Containers started in one batch append concurrently; allow for
		// that, not for lines out of order by more.
		if at.Before(prev.Add(-time.Second)) {
			t.Errorf("round %d: /data/starts line %d (%s) is out of order after %s", r, i+1, l, prev.Format(time.RFC3339Nano))
		}
		prev = at
	}
	c.lastStarts, c.lastWrites = starts, writes
}

// expectedWrite returns the line the container of a start event appends to
// /data/writes, from its service and release (the container's name
// <service>_<commit>_<h8> at its creation), or "" for a service without one.
func (c *crashRun) expectedWrite(e events.Message) string {
	svc := e.Actor.Attributes[docker.LabelServiceName]
	name := e.Actor.Attributes["name"]
	parts := strings.Split(name, "_")
	if len(parts) < 3 {
		return "?unparsable container name " + name
	}
	commit := parts[len(parts)-2]
	rel, ok := c.releases[commit]
	if !ok {
		return "?unknown release " + commit
	}
	return rel.writes[svc]
}

// volumeFile reads a file of the app's volume data through its mount point.
func (c *crashRun) volumeFile(name string) string {
	c.t.Helper()
	list, err := c.engine.VolumeList(c.ctx, client.VolumeListOptions{Filters: client.Filters{}.
		Add("label", docker.LabelAppUUID+"="+c.uuid).
		Add("label", docker.LabelVolumeName+"=data")})
	if err != nil {
		c.t.Fatal(err)
	}
	var names []string
	for _, v := range list.Items {
		if v.Labels[docker.LabelBackupOf] == "" {
			names = append(names, v.Name)
		}
	}
	if len(names) != 1 {
		c.t.Fatalf("want one volume data of app %s, found %v", c.uuid, names)
	}
	res, err := c.engine.VolumeInspect(c.ctx, names[0], client.VolumeInspectOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(res.Volume.Mountpoint, name))
	if err != nil && !os.IsNotExist(err) {
		c.t.Fatal(err)
	}
	return string(b)
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func sameMultiset(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(a, b)
}

// dumpLogs prints the tails of the round's agent logs.
func (c *crashRun) dumpLogs(r int) {
	for _, run := range []string{"a", "b", "c"} {
		path := filepath.Join(c.logDir, fmt.Sprintf("round%02d-%s.log", r, run))
		if _, err := os.Stat(path); err == nil {
			c.t.Logf("--- %s (last 60 lines) ---\n%s", path, tail(path, 60))
		}
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	ls := lines(string(b))
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// cleanup removes everything the app and namespace left on the engine: its
// containers, networks, volumes (with backups), helper containers mounting
// them, and the images pulled from the test registry.
func (c *crashRun) cleanup(registryHost string) {
	ctx := context.Background()
	t := c.t
	label := client.Filters{}.Add("label", docker.LabelAppUUID+"="+c.uuid)
	if list, err := c.engine.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: label}); err == nil {
		for _, ctr := range list.Items {
			if _, err := c.engine.ContainerRemove(ctx, ctr.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
				t.Logf("cleanup: remove container %s: %v", short12(ctr.ID), err)
			}
		}
	}
	if helpers, err := c.engine.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: client.Filters{}.Add("label", docker.LabelHelper+"=true")}); err == nil {
		for _, h := range helpers.Items {
			for _, m := range h.Mounts {
				if strings.Contains(m.Name, c.uuid) {
					_, _ = c.engine.ContainerRemove(ctx, h.ID, client.ContainerRemoveOptions{Force: true})
				}
			}
		}
	}
	// Whatever else the namespace holds (the runtime's own view).
	if snap, err := c.rt.Snapshot(ctx); err == nil {
		for _, ctr := range snap.Containers {
			_ = c.rt.Remove(ctx, ctr.ID)
		}
		for _, n := range snap.Networks {
			_ = c.rt.RemoveNetwork(ctx, n.AppUUID, n.Name)
		}
		for _, v := range snap.Volumes {
			_ = c.rt.RemoveVolume(ctx, v.AppUUID, v.Name)
		}
	} else {
		t.Logf("cleanup: snapshot: %v", err)
	}
	if list, err := c.engine.NetworkList(ctx, client.NetworkListOptions{Filters: label}); err == nil {
		for _, n := range list.Items {
			if _, err := c.engine.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
				t.Logf("cleanup: remove network %s: %v", n.Name, err)
			}
		}
	}
	if list, err := c.engine.VolumeList(ctx, client.VolumeListOptions{}); err == nil {
		for _, v := range list.Items {
			if v.Labels[docker.LabelAppUUID] == c.uuid || strings.Contains(v.Name, c.uuid) || strings.Contains(v.Labels[docker.LabelBackupOf], c.uuid) {
				if _, err := c.engine.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true}); err != nil {
					t.Logf("cleanup: remove volume %s: %v", v.Name, err)
				}
			}
		}
	}
	if list, err := c.engine.ImageList(ctx, client.ImageListOptions{}); err == nil {
		for _, img := range list.Items {
			for _, ref := range img.RepoTags {
				if strings.HasPrefix(ref, registryHost+"/") {
					_, _ = c.engine.ImageRemove(ctx, ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
				}
			}
		}
	}
}

// agentProc is one `reeve agent` subprocess.
type agentProc struct {
	cmd     *exec.Cmd
	client  *localapi.Client
	logPath string
	done    chan struct{}

	steps    atomic.Int64
	stepCh   chan struct{} // signalled on every step logged
	mu       sync.Mutex
	stepLog  []string
	killOnce sync.Once
}

// startAgent starts `reeve agent --local` on the run's data directory and
// namespace and waits until its API answers /ping.
func (c *crashRun) startAgent(r int, run string) *agentProc {
	t := c.t
	t.Helper()
	addr := freeAddr(t)
	logPath := filepath.Join(c.logDir, fmt.Sprintf("round%02d-%s.log", r, run))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "agent", "--local", "--data", c.dataDir, "--listen", addr, "--namespace", c.ns)
	// The agent dies with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	p := &agentProc{cmd: cmd, client: localapi.NewClient(addr).WithKeyFrom(c.dataDir), logPath: logPath, done: make(chan struct{}), stepCh: make(chan struct{}, 1)}
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()
	go func() {
		defer close(p.done)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			if strings.Contains(line, " msg=step ") {
				p.mu.Lock()
				if _, s, ok := strings.Cut(line, " step="); ok {
					p.stepLog = append(p.stepLog, strings.Trim(s, `"`))
				}
				p.mu.Unlock()
				p.steps.Add(1)
				select {
				case p.stepCh <- struct{}{}:
				default:
				}
			}
		}
		_, _ = io.Copy(logFile, stderr)
		_ = cmd.Wait()
	}()

	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get("http://" + addr + "/ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if p.exited() || time.Now().After(deadline) {
			p.kill()
			t.Fatalf("round %d: agent %s did not answer /ping at %s (err %v); log:\n%s", r, run, addr, err, tail(logPath, 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (p *agentProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *agentProc) kill() {
	p.killOnce.Do(func() {
		if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
			panic(fmt.Sprintf("kill agent %d: %v", p.cmd.Process.Pid, err))
		}
		<-p.done
	})
}

// waitFor waits until the steps the agent has logged satisfy cond, or
// until deadline.
func (p *agentProc) waitFor(cond func(steps []string) bool, deadline time.Time) bool {
	for {
		p.mu.Lock()
		ok := cond(p.stepLog)
		p.mu.Unlock()
		if ok {
			return true
		}
		d := time.Until(deadline)
		if d <= 0 {
			return false
		}
		select {
		case <-p.stepCh:
		case <-p.done:
			return false
		case <-time.After(d):
			return false
		}
	}
}

func (p *agentProc) stepCount() int64 { return p.steps.Load() }

func (p *agentProc) lastSteps(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stepLog
	if len(s) > n {
		s = s[len(s)-n:]
	}
	if len(s) == 0 {
		return "none"
	}
	return "last " + strings.Join(s, ", ")
}
