package testimage

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func TestPushAndPullBack(t *testing.T) {
	start := time.Now()
	prog := Program(t)
	t.Logf("Program: %d bytes in %v", len(prog), time.Since(start))

	reg := StartRegistry(t)
	start = time.Now()
	ref := reg.Push(t, "reeve/app", "v2", map[string]string{"/version": "v2", "/etc/app/conf": "x=1"})
	t.Logf("Push %s in %v", ref, time.Since(start))
	if want := reg.Host() + "/reeve/app:v2"; ref != want || !strings.HasPrefix(ref, "127.0.0.1:") {
		t.Fatalf("Push returned %q, want %q", ref, want)
	}

	img, err := remote.Image(mustRef(t, ref, name.Insecure))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || cfg.Variant != variant() {
		t.Errorf("platform = %s/%s/%s, want linux/%s/%s", cfg.OS, cfg.Architecture, cfg.Variant, runtime.GOARCH, variant())
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/testprog"}) {
		t.Errorf("entrypoint = %q", cfg.Config.Entrypoint)
	}
	if len(cfg.Config.Env) != 1 || !strings.HasPrefix(cfg.Config.Env[0], "PATH=") {
		t.Errorf("env = %q", cfg.Config.Env)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 2 {
		t.Fatalf("%d layers, want 2", len(layers))
	}
	type entry struct {
		mode    int64
		content string
	}
	entries := map[string]entry{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			entries[h.Name] = entry{h.Mode, string(b)}
		}
		rc.Close()
	}
	if e := entries["testprog"]; e.mode != 0o755 || e.content != string(prog) {
		t.Errorf("/testprog: mode %o, %d bytes; want 0755, %d bytes", e.mode, len(e.content), len(prog))
	}
	if e := entries["version"]; e.content != "v2" {
		t.Errorf("/version = %q, want v2", e.content)
	}
	if e := entries["etc/app/conf"]; e.content != "x=1" {
		t.Errorf("/etc/app/conf = %q", e.content)
	}
	for _, dir := range []string{"tmp/", "etc/", "etc/app/"} {
		if _, ok := entries[dir]; !ok {
			t.Errorf("no directory entry %s", dir)
		}
	}

	// Images are reproducible; different files give different images.
	same := reg.Push(t, "reeve/other", "v2", map[string]string{"/etc/app/conf": "x=1", "/version": "v2"})
	other := reg.Push(t, "reeve/app", "v3", map[string]string{"/version": "v3"})
	if reg.Digest(t, same) != reg.Digest(t, ref) {
		t.Errorf("same files, different digests")
	}
	if d := reg.Digest(t, other); d == reg.Digest(t, ref) || !strings.HasPrefix(d, "sha256:") {
		t.Errorf("digest of v3 = %s, v2 = %s", d, reg.Digest(t, ref))
	}
	if _, err := remote.Image(mustRef(t, reg.Host()+"/reeve/app@"+reg.Digest(t, ref), name.Insecure)); err != nil {
		t.Errorf("pull by digest: %v", err)
	}
}

func TestAuthRegistry(t *testing.T) {
	reg := StartRegistryWithAuth(t, "alice", "s3cret")
	ref := reg.Push(t, "private/app", "v1", map[string]string{"/version": "v1"})
	parsed := mustRef(t, ref, name.Insecure)

	resp, err := http.Get("http://" + reg.Host() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic realm=") {
		t.Errorf("GET /v2/ without credentials: %s, WWW-Authenticate %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}

	wantUnauthorized := func(what string, err error) {
		t.Helper()
		var terr *transport.Error
		if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: err = %v, want 401", what, err)
		}
	}
	_, err = remote.Image(parsed)
	wantUnauthorized("pull without credentials", err)
	_, err = remote.Image(parsed, remote.WithAuth(&authn.Basic{Username: "alice", Password: "wrong"}))
	wantUnauthorized("pull with a wrong password", err)
	err = remote.Write(mustRef(t, reg.Host()+"/private/app:anon", name.Insecure), empty.Image)
	wantUnauthorized("push without credentials", err)

	img, err := remote.Image(parsed, remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
	if err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	if _, err := img.ConfigFile(); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
}

// TestProgram runs testprog on the host (it is a linux binary).
func TestProgram(t *testing.T) {
	if runtime.GOOS != "linux" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but this host is %s: testprog is a Linux program and CI must run on Linux", runtime.GOOS)
		}
		t.Skipf("skipped until run on Linux (required when CI=true): testprog is a Linux program run on the host here, and this host is %s", runtime.GOOS)
	}
	bin := filepath.Join(t.TempDir(), "testprog")
	if err := os.WriteFile(bin, Program(t), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(env []string, args ...string) (*exec.Cmd, *syncBuffer) {
		var out syncBuffer
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		return cmd, &out
	}
	exitCode := func(cmd *exec.Cmd) int {
		t.Helper()
		err := cmd.Wait()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode()
	}

	t.Run("service", func(t *testing.T) {
		dir := t.TempDir()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		env := []string{
			"TESTPROG_VERSION=v9",
			"TESTPROG_WRITE=" + dir + "/vol/data=hello",
			"TESTPROG_STARTLOG=" + dir + "/vol/starts",
			"TESTPROG_NAME=web",
			"TESTPROG_HANDOVER=" + dir + "/handover",
			"TESTPROG_HANDOVER_AFTER=200ms",
			"TESTPROG_HEALTHY_AFTER=100ms",
			"TESTPROG_HEALTH_FILE=" + dir + "/healthy",
			"TESTPROG_LISTEN=" + addr,
			"TESTPROG_LINES=4",
			"TESTPROG_STDERR=1",
		}
		health := exec.Command(bin, "health")
		health.Env = env
		if health.Run() == nil {
			t.Error("healthy before start")
		}
		cmd, out := run(env)
		waitFor(t, "started line", func() bool { return strings.Contains(out.String(), "testprog v9 started\n") })
		if b, _ := os.ReadFile(dir + "/vol/data"); string(b) != "hello\n" {
			t.Errorf("TESTPROG_WRITE wrote %q", b)
		}
		b, _ := os.ReadFile(dir + "/vol/starts")
		if f := strings.Fields(string(b)); len(f) != 2 || f[0] != "web" {
			t.Errorf("start log = %q", b)
		} else if _, err := time.Parse(time.RFC3339Nano, f[1]); err != nil {
			t.Errorf("start log time: %v", err)
		}
		waitFor(t, "lines", func() bool { return strings.Contains(out.String(), "line 4\n") })
		waitFor(t, "handover file", func() bool { _, err := os.Stat(dir + "/handover"); return err == nil })
		health = exec.Command(bin, "health")
		health.Env = env
		if err := health.Run(); err != nil {
			t.Errorf("health after TESTPROG_HEALTHY_AFTER: %v", err)
		}
		var body []byte
		waitFor(t, "HTTP", func() bool {
			resp, err := http.Get("http://" + addr + "/")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, _ = io.ReadAll(resp.Body)
			return resp.StatusCode == 200
		})
		if string(body) != "ok v9" {
			t.Errorf("HTTP body = %q", body)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if code := exitCode(cmd); code != 0 {
			t.Errorf("exit code after SIGTERM = %d, want 0", code)
		}
		if !strings.HasSuffix(out.String(), "testprog stopping\n") {
			t.Errorf("output = %q", out.String())
		}
	})

	t.Run("exit", func(t *testing.T) {
		cmd, out := run([]string{"TESTPROG_EXIT=3", "TESTPROG_LINES=2", "TESTPROG_LINE_INTERVAL=10ms"})
		if code := exitCode(cmd); code != 3 {
			t.Errorf("exit code = %d, want 3", code)
		}
		if want := "testprog dev started\nline 1\nline 2\ntestprog exiting with code 3\n"; out.String() != want {
			t.Errorf("output = %q, want %q", out.String(), want)
		}
	})

	t.Run("ignore-term", func(t *testing.T) {
		cmd, out := run([]string{"TESTPROG_IGNORE_TERM=1"})
		waitFor(t, "started line", func() bool { return strings.Contains(out.String(), "started") })
		cmd.Process.Signal(syscall.SIGTERM)
		waitFor(t, "ignoring line", func() bool { return strings.Contains(out.String(), "testprog ignoring terminated") })
		time.Sleep(50 * time.Millisecond)
		if cmd.Process.Signal(syscall.Signal(0)) != nil {
			t.Fatal("process gone after ignored SIGTERM")
		}
		cmd.Process.Kill()
		cmd.Wait()
	})

	t.Run("commands", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(dir+"/b", []byte("bee"), 0o644)
		os.WriteFile(dir+"/a", nil, 0o644)
		for _, tc := range []struct {
			args []string
			code int
			out  string
		}{
			{[]string{"cat", dir + "/b"}, 0, "bee"},
			{[]string{"cat", dir + "/missing"}, 1, ""},
			{[]string{"ls", dir}, 0, "a\nb\n"},
			{[]string{"ls", dir + "/missing"}, 1, ""},
			{[]string{"sleep", "10ms"}, 0, ""},
			{[]string{"health"}, 1, ""},
			{[]string{"bogus"}, 2, ""},
		} {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = []string{"TESTPROG_HEALTH_FILE=" + dir + "/missing"}
			out, _ := cmd.Output()
			if code := cmd.ProcessState.ExitCode(); code != tc.code || string(out) != tc.out {
				t.Errorf("testprog %q: code %d, stdout %q; want %d, %q", tc.args, code, out, tc.code, tc.out)
			}
		}
	})
}

// TestEngine pulls pushed images with the real engine and runs them. It
// talks to the engine API with plain HTTP so that this package does not
// depend on the moby client.
func TestEngine(t *testing.T) {
	RequireDocker(t)
	reg := StartRegistry(t)
	ref := reg.Push(t, "reeve-testimage/app", "v2", map[string]string{"/version": "v2"})
	start := time.Now()
	if err := enginePull(t, ref, ""); err != nil {
		t.Fatalf("engine pull %s: %v", ref, err)
	}
	t.Logf("engine pull in %v", time.Since(start))

	t.Run("exit-code", func(t *testing.T) {
		id := runContainer(t, ref, "TESTPROG_EXIT=3")
		if code := waitContainer(t, id); code != 3 {
			t.Errorf("exit code = %d, want 3", code)
		}
		if logs := containerLogs(t, id); !strings.Contains(logs, "testprog v2 started") {
			t.Errorf("logs = %q", logs)
		}
	})
	t.Run("stop", func(t *testing.T) {
		t.Parallel()
		id := runContainer(t, ref)
		waitFor(t, "started line", func() bool { return strings.Contains(containerLogs(t, id), "started") })
		engineDo(t, "POST", "/containers/"+id+"/stop?t=10", nil, nil, http.StatusNoContent)
		if code := waitContainer(t, id); code != 0 {
			t.Errorf("exit code = %d, want 0", code)
		}
		if logs := containerLogs(t, id); !strings.Contains(logs, "testprog stopping") {
			t.Errorf("logs = %q", logs)
		}
	})
	t.Run("stop-ignored", func(t *testing.T) {
		t.Parallel()
		id := runContainer(t, ref, "TESTPROG_IGNORE_TERM=1")
		waitFor(t, "started line", func() bool { return strings.Contains(containerLogs(t, id), "started") })
		engineDo(t, "POST", "/containers/"+id+"/stop?t=1", nil, nil, http.StatusNoContent)
		if code := waitContainer(t, id); code != 137 {
			t.Errorf("exit code = %d, want 137 (killed)", code)
		}
		if logs := containerLogs(t, id); !strings.Contains(logs, "testprog ignoring terminated") {
			t.Errorf("logs = %q", logs)
		}
	})
	t.Run("auth", func(t *testing.T) {
		t.Parallel()
		areg := StartRegistryWithAuth(t, "bob", "hunter2")
		aref := areg.Push(t, "reeve-testimage/private", "v1", nil)
		if err := enginePull(t, aref, ""); err == nil {
			t.Error("engine pulled from the auth registry without credentials")
		} else {
			t.Logf("engine pull without credentials: %v", err)
		}
		auth, _ := json.Marshal(map[string]string{"username": "bob", "password": "hunter2", "serveraddress": areg.Host()})
		if err := enginePull(t, aref, base64.URLEncoding.EncodeToString(auth)); err != nil {
			t.Errorf("engine pull with credentials: %v", err)
		}
	})
}

// engineDo sends a request to the engine API v1.41, fails the test unless
// the status is wantStatus and decodes a JSON answer into out (if not nil).
func engineDo(t testing.TB, method, path string, body, out any, wantStatus int) {
	t.Helper()
	_, c, base, err := engine()
	if err != nil {
		t.Fatal(err)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, base+"/v1.41"+path, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// enginePull pulls ref with the engine (X-Registry-Auth set when auth is
// not empty) and removes the image on cleanup.
func enginePull(t testing.TB, ref, auth string) error {
	t.Helper()
	_, c, base, err := engine()
	if err != nil {
		return err
	}
	i := strings.LastIndex(ref, ":")
	q := url.Values{"fromImage": {ref[:i]}, "tag": {ref[i+1:]}}
	req, _ := http.NewRequest("POST", base+"/v1.41/images/create?"+q.Encode(), nil)
	if auth != "" {
		req.Header.Set("X-Registry-Auth", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	// The answer is a stream of JSON progress messages; errors come as
	// messages too.
	dec := json.NewDecoder(resp.Body)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
	}
	t.Cleanup(func() {
		req, _ := http.NewRequest("DELETE", base+"/v1.41/images/"+ref+"?force=1", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	return nil
}

// runContainer creates and starts a container of ref with env, removed
// on cleanup, and returns its ID.
func runContainer(t testing.TB, ref string, env ...string) string {
	t.Helper()
	var created struct{ Id string }
	engineDo(t, "POST", "/containers/create", map[string]any{
		"Image":  ref,
		"Env":    env,
		"Labels": map[string]string{"dev.reeve.test": "testimage"},
	}, &created, http.StatusCreated)
	t.Cleanup(func() { engineDo(t, "DELETE", "/containers/"+created.Id+"?force=1", nil, nil, http.StatusNoContent) })
	engineDo(t, "POST", "/containers/"+created.Id+"/start", nil, nil, http.StatusNoContent)
	return created.Id
}

func waitContainer(t testing.TB, id string) int {
	t.Helper()
	var res struct{ StatusCode int }
	engineDo(t, "POST", "/containers/"+id+"/wait", nil, &res, http.StatusOK)
	return res.StatusCode
}

// containerLogs returns stdout and stderr of a container without TTY,
// taking apart the engine's multiplexed stream (8-byte frame headers).
func containerLogs(t testing.TB, id string) string {
	t.Helper()
	_, c, base, err := engine()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(base + "/v1.41/containers/" + id + "/logs?stdout=1&stderr=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out strings.Builder
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			break
		}
		if _, err := io.CopyN(&out, resp.Body, int64(binary.BigEndian.Uint32(hdr[4:]))); err != nil {
			break
		}
	}
	return out.String()
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func mustRef(t testing.TB, ref string, opts ...name.Option) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
