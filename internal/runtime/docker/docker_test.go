package docker_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
	"reeve.dev/reeve/internal/runtime/docker"
	"reeve.dev/reeve/internal/runtime/runtimetest"
	"reeve.dev/reeve/internal/testimage"
)

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func h8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:8]
}

func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

// cleanupCtx is for t.Cleanup functions, which run after t.Context ends.
func cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

func newRuntime(t *testing.T, opts docker.Options) *docker.Runtime {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	rt, err := docker.New(t.Context(), opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// engine is the plain client, for what the runtime must not be used to
// check or set up.
func engine(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// push pushes a testprog image unique to this test run, so that no other
// reference shares its ID, and removes it from the engine at the end.
func push(t *testing.T, reg *testimage.Registry, rt *docker.Runtime, repo, tag string) string {
	t.Helper()
	ref := reg.Push(t, repo, tag, map[string]string{"/version": tag, "/run": randomHex(8)})
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		if err := rt.RemoveImage(c, ref); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ref
}

// mounts reports whether a container mounts a volume whose name starts
// with prefix.
func mounts(c container.Summary, prefix string) bool {
	for _, m := range c.Mounts {
		if strings.HasPrefix(m.Name, prefix) {
			return true
		}
	}
	return false
}

// leftovers lists the reeve objects of apps with prefix on the engine.
func leftovers(t *testing.T, cli *client.Client, prefix string) []string {
	t.Helper()
	c, cancel := cleanupCtx()
	defer cancel()
	var out []string
	ctrs, err := cli.ContainerList(c, client.ContainerListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ctrs.Items {
		if strings.HasPrefix(x.Labels[docker.LabelAppUUID], prefix) || (x.Labels[docker.LabelHelper] == "true" && mounts(x, prefix)) {
			out = append(out, "container "+strings.Join(x.Names, ","))
		}
	}
	nets, err := cli.NetworkList(c, client.NetworkListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range nets.Items {
		if strings.HasPrefix(x.Labels[docker.LabelAppUUID], prefix) {
			out = append(out, "network "+x.Name)
		}
	}
	vols, err := cli.VolumeList(c, client.VolumeListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range vols.Items {
		if strings.HasPrefix(x.Labels[docker.LabelAppUUID], prefix) {
			out = append(out, "volume "+x.Name)
		}
	}
	return out
}

func TestConformance(t *testing.T) {
	testimage.RequireDocker(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	images := runtimetest.Images{
		V1:      push(t, reg, rt, "reeve/conformance", "v1"),
		V2:      push(t, reg, rt, "reeve/conformance", "v2"),
		Missing: reg.Host() + "/reeve/missing:v1",
	}
	runtimetest.Run(t, rt, images)
	if left := leftovers(t, engine(t), runtimetest.AppPrefix); len(left) > 0 {
		t.Errorf("the suite left behind: %v", left)
	}
}

// app returns a fresh app UUID whose objects are removed when t ends, with
// the plain client so that a broken runtime does not leave them behind.
func app(t *testing.T, cli *client.Client) string {
	uuid := "dkt-" + randomHex(4)
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		f := client.Filters{}.Add("label", docker.LabelAppUUID+"="+uuid)
		ctrs, _ := cli.ContainerList(c, client.ContainerListOptions{All: true, Filters: f})
		for _, x := range ctrs.Items {
			if _, err := cli.ContainerRemove(c, x.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		helpers, _ := cli.ContainerList(c, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", docker.LabelHelper+"=true")})
		for _, x := range helpers.Items {
			if mounts(x, uuid) {
				cli.ContainerRemove(c, x.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
		nets, _ := cli.NetworkList(c, client.NetworkListOptions{Filters: f})
		for _, x := range nets.Items {
			if _, err := cli.NetworkRemove(c, x.ID, client.NetworkRemoveOptions{}); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		vols, _ := cli.VolumeList(c, client.VolumeListOptions{Filters: f})
		for _, x := range vols.Items {
			if _, err := cli.VolumeRemove(c, x.Name, client.VolumeRemoveOptions{}); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return uuid
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.LocalAddr().(*net.UDPAddr).Port)
}

func inspect(t *testing.T, cli *client.Client, id string) container.InspectResponse {
	t.Helper()
	res, err := cli.ContainerInspect(testCtx(t), id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s: %v", id, err)
	}
	return res.Container
}

func waitRunning(t *testing.T, cli *client.Client, id string) container.InspectResponse {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := inspect(t, cli, id)
		if c.State.Running && (c.State.Health == nil || c.State.Health.Status == container.Healthy) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s not running (and healthy) within 30 s: %+v", id, c.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestComposition checks that every Composition field lands in the engine.
func TestComposition(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/composition", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	uuid := app(t, cli)

	subnet := fmt.Sprintf("10.%d.%d.0/24", 100+time.Now().Nanosecond()%100, time.Now().Second()+100)
	ip := strings.TrimSuffix(subnet, "0/24") + "23"
	if err := rt.CreateNetwork(ctx, reeve.NetworkSpec{AppUUID: uuid, Name: "front", Network: reeve.Network{
		IPAM: &reeve.IPAM{Config: []reeve.IPAMConfig{{Subnet: subnet}}},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := rt.CreateNetwork(ctx, reeve.NetworkSpec{AppUUID: uuid, Name: "back"}); err != nil {
		t.Fatal(err)
	}
	if err := rt.CreateVolume(ctx, reeve.VolumeSpec{AppUUID: uuid, Name: "data"}); err != nil {
		t.Fatal(err)
	}
	bindDir, extraDir := t.TempDir(), t.TempDir()
	udpPort := freePort(t)

	comp := reeve.Composition{
		Ports: []reeve.Port{
			{Target: 8080},
			{Target: 9090, Published: udpPort, HostIP: "127.0.0.1", Protocol: "udp"},
		},
		Restart: "on-failure:3",
		Healthcheck: &reeve.Healthcheck{
			Test:        []string{"CMD", "/testprog", "health"},
			Interval:    reeve.Duration(time.Second),
			Timeout:     reeve.Duration(2 * time.Second),
			StartPeriod: reeve.Duration(3 * time.Second),
			Retries:     4,
		},
		Networks: map[string]reeve.ServiceNetwork{
			"front": {Aliases: []string{"www"}, IPv4Address: ip},
			"back":  {},
		},
		Volumes: []reeve.Mount{
			{Type: reeve.MountVolume, Source: "data", Target: "/data"},
			{Type: reeve.MountVolume, Target: "/anon"},
			{Type: reeve.MountBind, Source: bindDir, Target: "/host", ReadOnly: true},
			{Type: reeve.MountTmpfs, Target: "/scratch"},
		},
		Devices:         []reeve.DeviceMapping{{Host: "/dev/null", Container: "/dev/reeve-null", Permissions: "rw"}, {Host: "/dev/zero"}},
		CapAdd:          []string{"NET_ADMIN"},
		CapDrop:         []string{"MKNOD"},
		WorkingDir:      "/tmp",
		User:            "1000:1000",
		StopGracePeriod: reeve.Duration(7 * time.Second),
		Tmpfs:           []string{"/cache/t:size=1m", "/cache/u"},
		Sysctls:         map[string]string{"net.core.somaxconn": "1024"},
		Ulimits:         map[string]reeve.Ulimit{"nofile": {Soft: 1024, Hard: 2048}},
	}
	spec := reeve.ServiceSpec{
		AppUUID: uuid, AppID: 9, Commit: "abc123", ServiceName: "web_1",
		Service: reeve.Service{
			Image:       image,
			Environment: map[string]string{"TESTPROG_LISTEN": ":8080", "TESTPROG_HEALTHY_AFTER": "0s", "SHARED": "service"},
			Labels:      map[string]string{"com.example.tier": "front", reeve.LabelUpdateStrategy: reeve.StrategyHandOver},
			Composition: comp,
		},
		ExtraEnv:    map[string]string{"REEVE_DEVICE_UUID": "dev-1", "SHARED": "agent"},
		ExtraMounts: []reeve.Mount{{Type: reeve.MountBind, Source: extraDir, Target: "/extra"}},
	}
	id, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := rt.Start(ctx, id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	c := waitRunning(t, cli, id)
	hash := spec.Service.ConfigHash()
	norm, _ := reeve.NormalizeImage(image)

	port := func(s string) network.Port { return network.MustParsePort(s) }
	mounts := map[string]container.MountPoint{}
	for _, m := range c.Mounts {
		mounts[m.Destination] = m
	}
	var hostMounts []string
	for _, m := range c.HostConfig.Mounts {
		hostMounts = append(hostMounts, fmt.Sprintf("%s %s>%s ro=%v", m.Type, m.Source, m.Target, m.ReadOnly))
	}
	endpoint := func(n string) *network.EndpointSettings {
		if ep := c.NetworkSettings.Networks[uuid+"_"+n]; ep != nil {
			return ep
		}
		return &network.EndpointSettings{}
	}
	for _, tc := range []struct {
		field     string
		got, want any
	}{
		{"Name", c.Name, "/web_1_abc123_" + h8(uuid+"/"+hash)},
		{"Config.Image", c.Config.Image, norm},
		{"Config.Labels", c.Config.Labels, map[string]string{
			"com.example.tier":        "front",
			reeve.LabelUpdateStrategy: reeve.StrategyHandOver,
			docker.LabelManaged:       "true",
			docker.LabelAppUUID:       uuid,
			docker.LabelAppID:         "9",
			docker.LabelServiceName:   "web_1",
			docker.LabelConfigHash:    hash,
			docker.LabelImage:         norm,
			docker.LabelNetworks:      "back,front",
			docker.LabelVolumes:       "data",
		}},
		{"Config.Env has service and agent variables, agent's win", slices.Contains(c.Config.Env, "TESTPROG_LISTEN=:8080") &&
			slices.Contains(c.Config.Env, "REEVE_DEVICE_UUID=dev-1") && slices.Contains(c.Config.Env, "SHARED=agent"), true},
		{"Config.Entrypoint (image's)", c.Config.Entrypoint, []string{"/testprog"}},
		{"Config.ExposedPorts", c.Config.ExposedPorts, network.PortSet{port("8080/tcp"): {}, port("9090/udp"): {}}},
		{"HostConfig.PortBindings", c.HostConfig.PortBindings, network.PortMap{
			port("8080/tcp"): {{}},
			port("9090/udp"): {{HostIP: mustAddr("127.0.0.1"), HostPort: fmt.Sprint(udpPort)}},
		}},
		{"ephemeral host port assigned", len(c.NetworkSettings.Ports[port("8080/tcp")]) > 0 && c.NetworkSettings.Ports[port("8080/tcp")][0].HostPort != "", true},
		{"HostConfig.RestartPolicy", c.HostConfig.RestartPolicy, container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}},
		{"Config.Healthcheck", c.Config.Healthcheck, &container.HealthConfig{
			Test: []string{"CMD", "/testprog", "health"}, Interval: time.Second, Timeout: 2 * time.Second, StartPeriod: 3 * time.Second, Retries: 4,
		}},
		{"State.Health.Status", c.State.Health.Status, container.Healthy},
		{"HostConfig.NetworkMode (first network)", c.HostConfig.NetworkMode, container.NetworkMode(uuid + "_back")},
		{"networks", slices.Sorted(func(yield func(string) bool) {
			for n := range c.NetworkSettings.Networks {
				if !yield(n) {
					return
				}
			}
		}), []string{uuid + "_back", uuid + "_front"}},
		{"front aliases", slices.Contains(endpoint("front").Aliases, "web_1") && slices.Contains(endpoint("front").Aliases, "www"), true},
		{"back aliases", slices.Contains(endpoint("back").Aliases, "web_1"), true},
		{"front IPv4Address", endpoint("front").IPAddress.String(), ip},
		{"HostConfig.Mounts", hostMounts, []string{
			"volume " + uuid + "_data>/data ro=false",
			"volume >/anon ro=false",
			"tmpfs >/scratch ro=false",
		}},
		{"HostConfig.Binds", c.HostConfig.Binds, []string{bindDir + ":/host:ro", extraDir + ":/extra"}},
		{"mount /data", mounts["/data"].Name, uuid + "_data"},
		{"mount /anon is an anonymous volume", mounts["/anon"].Type == mount.TypeVolume && mounts["/anon"].Name != "", true},
		{"mount /host read-only", mounts["/host"].RW, false},
		{"mount /extra", mounts["/extra"].Source, extraDir},
		{"HostConfig.Devices", c.HostConfig.Devices, []container.DeviceMapping{
			{PathOnHost: "/dev/null", PathInContainer: "/dev/reeve-null", CgroupPermissions: "rw"},
			{PathOnHost: "/dev/zero", PathInContainer: "/dev/zero", CgroupPermissions: "rwm"},
		}},
		{"HostConfig.CapAdd", c.HostConfig.CapAdd, []string{"CAP_NET_ADMIN"}},
		{"HostConfig.CapDrop", c.HostConfig.CapDrop, []string{"CAP_MKNOD"}},
		{"HostConfig.Privileged", c.HostConfig.Privileged, false},
		{"Config.WorkingDir", c.Config.WorkingDir, "/tmp"},
		{"Config.User", c.Config.User, "1000:1000"},
		{"Config.StopTimeout", *c.Config.StopTimeout, 7},
		{"HostConfig.Tmpfs", c.HostConfig.Tmpfs, map[string]string{"/cache/t": "size=1m", "/cache/u": ""}},
		{"HostConfig.Sysctls", c.HostConfig.Sysctls, map[string]string{"net.core.somaxconn": "1024"}},
		{"HostConfig.Ulimits", c.HostConfig.Ulimits, []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}},
	} {
		if diff := cmp.Diff(tc.want, tc.got, cmp.Comparer(func(a, b network.Port) bool { return a == b }),
			cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.field, diff)
		}
	}

	// The service answers on its ephemeral port.
	hp := c.NetworkSettings.Ports[port("8080/tcp")]
	if len(hp) > 0 {
		resp, err := http.Get("http://127.0.0.1:" + hp[0].HostPort)
		if err != nil {
			t.Errorf("GET the published port: %v", err)
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ok v1" {
				t.Errorf("GET the published port = %q, want %q", b, "ok v1")
			}
		}
	}

	// Snapshot reads the identity back.
	snap, err := rt.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var st reeve.ServiceState
	for _, x := range snap.Containers {
		if x.ID == id {
			st = x
		}
	}
	want := reeve.ServiceState{
		ID: id, AppUUID: uuid, AppID: 9, ServiceName: "web_1", Commit: "abc123", Image: norm, ConfigHash: hash,
		Status: "running", Health: "healthy", Networks: []string{"back", "front"}, Volumes: []string{"data"},
		Labels:    spec.Service.Labels,
		CreatedAt: st.CreatedAt, StartedAt: st.StartedAt,
	}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("Snapshot state (-want +got):\n%s", diff)
	}

	// Command, entrypoint, privileged and the fixed network modes.
	for _, mode := range []string{"none", "host", "bridge"} {
		t.Run("network_mode="+mode, func(t *testing.T) {
			sp := reeve.ServiceSpec{AppUUID: uuid, Commit: "abc123", ServiceName: "tool-" + mode, Service: reeve.Service{
				Image: image,
				Composition: reeve.Composition{
					Entrypoint:  []string{"/testprog", "sleep"},
					Command:     []string{"1h"},
					Privileged:  true,
					NetworkMode: mode,
					Restart:     "unless-stopped",
				},
			}}
			id, err := rt.Create(ctx, sp)
			if err != nil {
				t.Fatal(err)
			}
			c := inspect(t, cli, id)
			if diff := cmp.Diff(
				[]any{[]string{"/testprog", "sleep"}, []string{"1h"}, true, container.NetworkMode(mode), container.RestartPolicyMode("unless-stopped"), "", ""},
				[]any{c.Config.Entrypoint, c.Config.Cmd, c.HostConfig.Privileged, c.HostConfig.NetworkMode, c.HostConfig.RestartPolicy.Name, c.Config.Labels[docker.LabelNetworks], c.Config.Labels[docker.LabelVolumes]},
			); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	t.Run("restart default always, healthcheck disabled", func(t *testing.T) {
		sp := reeve.ServiceSpec{AppUUID: uuid, Commit: "abc123", ServiceName: "plain", Service: reeve.Service{
			Image: image, Composition: reeve.Composition{Healthcheck: &reeve.Healthcheck{Disable: true}},
		}}
		id, err := rt.Create(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		c := inspect(t, cli, id)
		if c.HostConfig.RestartPolicy.Name != "always" || c.Config.Healthcheck == nil || !slices.Equal(c.Config.Healthcheck.Test, []string{"NONE"}) {
			t.Errorf("restart %+v healthcheck %+v, want always and NONE", c.HostConfig.RestartPolicy, c.Config.Healthcheck)
		}
	})
}

func TestNetworkModeService(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/netmode", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	uuid := app(t, cli)
	if err := rt.CreateNetwork(ctx, reeve.NetworkSpec{AppUUID: uuid, Name: "default"}); err != nil {
		t.Fatal(err)
	}
	mainSpec := reeve.ServiceSpec{AppUUID: uuid, Commit: "c1", ServiceName: "main", Service: reeve.Service{
		Image: image, Environment: map[string]string{"TESTPROG_LISTEN": ":8080"},
		Composition: reeve.Composition{Networks: map[string]reeve.ServiceNetwork{"default": {}}},
	}}
	sideSpec := reeve.ServiceSpec{AppUUID: uuid, Commit: "c1", ServiceName: "sidecar", Service: reeve.Service{
		Image: image, Composition: reeve.Composition{NetworkMode: "service:main"},
	}}
	if _, err := rt.Create(ctx, sideSpec); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Create with network_mode service:main before main exists: %v, want runtime.ErrNotFound", err)
	}
	mainID, err := rt.Create(ctx, mainSpec)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, mainID); err != nil {
		t.Fatal(err)
	}
	sideID, err := rt.Create(ctx, sideSpec)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, sideID); err != nil {
		t.Fatal(err)
	}
	side := waitRunning(t, cli, sideID)
	if got, want := string(side.HostConfig.NetworkMode), "container:"+mainID; got != want {
		t.Errorf("sidecar NetworkMode = %q, want %q", got, want)
	}
	main := inspect(t, cli, mainID)
	if side.NetworkSettings.SandboxKey != "" && side.NetworkSettings.SandboxKey != main.NetworkSettings.SandboxKey {
		t.Errorf("sidecar network namespace %q, main's %q", side.NetworkSettings.SandboxKey, main.NetworkSettings.SandboxKey)
	}
}

func TestFetchCredentials(t *testing.T) {
	testimage.RequireDocker(t)
	reg := testimage.StartRegistryWithAuth(t, "reeve", "s3cret")
	plain := newRuntime(t, docker.Options{})
	ref := push(t, reg, plain, "reeve/private", "v1")
	ctx := testCtx(t)

	err := plain.Fetch(ctx, ref, nil)
	if err == nil {
		t.Fatal("Fetch without credentials succeeded")
	}
	if !strings.Contains(err.Error(), reg.Host()) {
		t.Errorf("Fetch without credentials: error %q does not name the registry %s", err, reg.Host())
	}
	t.Logf("without credentials: %v", err)

	wrong := newRuntime(t, docker.Options{Credentials: map[string]runtime.Auth{reg.Host(): {Username: "reeve", Password: "wrong"}}})
	if err := wrong.Fetch(ctx, ref, nil); err == nil || !strings.Contains(err.Error(), reg.Host()) {
		t.Errorf("Fetch with a wrong password: %v, want an error naming %s", err, reg.Host())
	}

	authed := newRuntime(t, docker.Options{Credentials: map[string]runtime.Auth{reg.Host(): {Username: "reeve", Password: "s3cret"}}})
	var last runtime.Progress
	if err := authed.Fetch(ctx, ref, func(p runtime.Progress) { last = p }); err != nil {
		t.Fatalf("Fetch with credentials: %v", err)
	}
	if last.Total == 0 || last.Current != last.Total {
		t.Errorf("last progress %+v", last)
	}
}

func TestEngineUnreachable(t *testing.T) {
	host := "unix://" + filepath.Join(t.TempDir(), "no-docker.sock")
	rt := newRuntime(t, docker.Options{Host: host})
	ctx := testCtx(t)
	spec := reeve.ServiceSpec{AppUUID: "a", Commit: "c", ServiceName: "s", Service: reeve.Service{Image: "alpine"}}
	for name, call := range map[string]func() error{
		"Ping":          func() error { return rt.Ping(ctx) },
		"Snapshot":      func() error { _, err := rt.Snapshot(ctx); return err },
		"Fetch":         func() error { return rt.Fetch(ctx, "alpine", nil) },
		"Create":        func() error { _, err := rt.Create(ctx, spec); return err },
		"Start":         func() error { return rt.Start(ctx, "x") },
		"Stop":          func() error { return rt.Stop(ctx, "x", 0) },
		"Remove":        func() error { return rt.Remove(ctx, "x") },
		"CreateNetwork": func() error { return rt.CreateNetwork(ctx, reeve.NetworkSpec{AppUUID: "a", Name: "n"}) },
		"RemoveVolume":  func() error { return rt.RemoveVolume(ctx, "a", "v") },
		"ReplaceVolume": func() error { return rt.ReplaceVolume(ctx, reeve.VolumeSpec{AppUUID: "a", Name: "v"}) },
		"RemoveImage":   func() error { return rt.RemoveImage(ctx, "alpine") },
		"Cleanup":       func() error { return rt.Cleanup(ctx) },
	} {
		err := call()
		if !errors.Is(err, runtime.ErrUnavailable) {
			t.Errorf("%s: %v, want runtime.ErrUnavailable", name, err)
			continue
		}
		if !strings.Contains(err.Error(), host) {
			t.Errorf("%s: error %q does not name the engine address", name, err)
		}
	}
	err := rt.Ping(ctx)
	t.Logf("error: %v", err)
	if s := err.Error(); s != strings.ToLower(s[:1])+s[1:] {
		t.Errorf("error %q does not start lowercase", s)
	}
}

func TestSnapshotIgnoresUnmanaged(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/unmanaged", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	name := "unmanaged-" + randomHex(4)
	res, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:   name,
		Config: &container.Config{Image: image, Labels: map[string]string{"com.example": "mine", docker.LabelAppUUID: "not-managed"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		cli.ContainerRemove(c, res.ID, client.ContainerRemoveOptions{Force: true})
		cli.NetworkRemove(c, name, client.NetworkRemoveOptions{})
		cli.VolumeRemove(c, name, client.VolumeRemoveOptions{})
	})
	if _, err := cli.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{Labels: map[string]string{docker.LabelAppUUID: "not-managed"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name, Labels: map[string]string{docker.LabelAppUUID: "not-managed"}}); err != nil {
		t.Fatal(err)
	}
	snap, err := rt.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range snap.Containers {
		if c.ID == res.ID || c.AppUUID == "not-managed" {
			t.Errorf("Snapshot lists an unmanaged container: %+v", c)
		}
	}
	for _, n := range snap.Networks {
		if n.AppUUID == "not-managed" {
			t.Errorf("Snapshot lists an unmanaged network: %+v", n)
		}
	}
	for _, v := range snap.Volumes {
		if v.AppUUID == "not-managed" {
			t.Errorf("Snapshot lists an unmanaged volume: %+v", v)
		}
	}
	// The image is listed: images are not owned.
	norm, _ := reeve.NormalizeImage(image)
	found := false
	for _, img := range snap.Images {
		found = found || slices.Contains(img.Refs, norm)
	}
	if !found {
		t.Errorf("Snapshot does not list image %s", norm)
	}
}

// volumeFiles reads a volume's content through a helper container: path →
// "mode uid:gid content".
func volumeFiles(t *testing.T, cli *client.Client, image, vol string) map[string]string {
	t.Helper()
	ctx := testCtx(t)
	id := helper(t, cli, image, vol)
	res, err := cli.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: "/v/."})
	if err != nil {
		t.Fatalf("read volume %s: %v", vol, err)
	}
	defer res.Content.Close()
	out := map[string]string{}
	tr := tar.NewReader(res.Content)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		if name == "" {
			continue
		}
		out[name] = fmt.Sprintf("%o %d:%d %s", h.Mode&0o7777, h.Uid, h.Gid, b)
	}
	return out
}

// writeVolume writes files (path → content) into a volume, owned by
// 1234:5678 with mode 0600.
func writeVolume(t *testing.T, cli *client.Client, image, vol string, files map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	}) {
		if dir := filepath.Dir(name); dir != "." {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o750, Uid: 1234, Gid: 5678})
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Uid: 1234, Gid: 5678, Size: int64(len(files[name]))})
		tw.Write([]byte(files[name]))
	}
	tw.Close()
	id := helper(t, cli, image, vol)
	if _, err := cli.CopyToContainer(testCtx(t), id, client.CopyToContainerOptions{DestinationPath: "/v", Content: &buf}); err != nil {
		t.Fatalf("write volume %s: %v", vol, err)
	}
}

func helper(t *testing.T, cli *client.Client, image, vol string) string {
	t.Helper()
	res, err := cli.ContainerCreate(testCtx(t), client.ContainerCreateOptions{
		Config:     &container.Config{Image: image},
		HostConfig: &container.HostConfig{Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: vol, Target: "/v"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		cli.ContainerRemove(c, res.ID, client.ContainerRemoveOptions{Force: true})
	})
	return res.ID
}

func removeHelpers(t *testing.T, cli *client.Client, image string) {
	t.Helper()
	list, _ := cli.ContainerList(testCtx(t), client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("ancestor", image)})
	for _, c := range list.Items {
		if c.Labels[docker.LabelManaged] == "" {
			cli.ContainerRemove(testCtx(t), c.ID, client.ContainerRemoveOptions{Force: true})
		}
	}
}

// TestReplaceVolumeCrashStates sets up, with the plain client, what a crash
// in each step of ReplaceVolume leaves, and checks that the agent's next
// move (ReplaceVolume when Snapshot shows the old definition, CreateVolume
// when it shows no volume) ends with the data in the new volume.
func TestReplaceVolumeCrashStates(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/volumes", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	data := map[string]string{"a.txt": "alpha", "sub/b.txt": "beta"}
	want := map[string]string{"a.txt": "600 1234:5678 alpha", "sub": "750 1234:5678 ", "sub/b.txt": "600 1234:5678 beta"}
	oldDef := reeve.Volume{Labels: map[string]string{"generation": "1"}}
	newDef := reeve.Volume{Labels: map[string]string{"generation": "2"}}

	// labels is what the runtime puts on a volume (a crash leaves the
	// runtime's own objects, so the test makes them the same way).
	labels := func(uuid string, v reeve.Volume) map[string]string {
		l := map[string]string{docker.LabelManaged: "true", docker.LabelAppUUID: uuid, docker.LabelVolumeName: "data", docker.LabelConfigHash: v.ConfigHash()}
		for k, x := range v.Labels {
			l[k] = x
		}
		return l
	}
	backupLabels := func(uuid string) map[string]string {
		return map[string]string{docker.LabelBackupOf: uuid + "_data", docker.LabelBackupHash: oldDef.ConfigHash(), docker.LabelAppUUID: uuid, docker.LabelBackupID: "b1"}
	}
	// legacyLabels are those of a backup an agent made before backup ids.
	legacyLabels := func(uuid string) map[string]string {
		return map[string]string{docker.LabelBackupOf: uuid + "_data", docker.LabelBackupHash: oldDef.ConfigHash(), docker.LabelAppUUID: uuid}
	}
	bk := func(uuid string) string { return docker.BackupName(uuid + "_data") }
	mk := func(name string, l map[string]string) {
		if _, err := cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name, Labels: l}); err != nil {
			t.Fatal(err)
		}
	}
	volumeListed := func(uuid string) (string, bool) {
		snap, err := rt.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range snap.Volumes {
			if v.AppUUID == uuid && v.Name == "data" {
				return v.ConfigHash, true
			}
		}
		return "", false
	}

	for _, tc := range []struct {
		name  string
		setup func(uuid string)
	}{
		{"no crash", func(uuid string) {
			mk(uuid+"_data", labels(uuid, oldDef))
			writeVolume(t, cli, image, uuid+"_data", data)
		}},
		{"in step 1: backup partial, original intact", func(uuid string) {
			mk(uuid+"_data", labels(uuid, oldDef))
			writeVolume(t, cli, image, uuid+"_data", data)
			mk(bk(uuid), backupLabels(uuid))
			writeVolume(t, cli, image, bk(uuid), map[string]string{"a.txt": "al"})
		}},
		{"in step 1 after an earlier restore: backup partial, original intact", func(uuid string) {
			l := labels(uuid, oldDef)
			l[docker.LabelRestoredFrom] = "b0"
			mk(uuid+"_data", l)
			writeVolume(t, cli, image, uuid+"_data", data)
			mk(bk(uuid), backupLabels(uuid))
			writeVolume(t, cli, image, bk(uuid), map[string]string{"a.txt": "al"})
		}},
		{"after step 2: backup complete, original removed", func(uuid string) {
			mk(bk(uuid), backupLabels(uuid))
			writeVolume(t, cli, image, bk(uuid), data)
		}},
		{"after step 2 of an older agent: legacy backup complete, original removed", func(uuid string) {
			mk(uuid+"_data_reeve-backup", legacyLabels(uuid))
			writeVolume(t, cli, image, uuid+"_data_reeve-backup", data)
		}},
		{"in step 4: backup complete, new volume partial", func(uuid string) {
			mk(bk(uuid), backupLabels(uuid))
			writeVolume(t, cli, image, bk(uuid), data)
			l := labels(uuid, newDef)
			l[docker.LabelRestoredFrom] = "b1"
			mk(uuid+"_data", l)
			writeVolume(t, cli, image, uuid+"_data", map[string]string{"a.txt": "alpha"})
		}},
		{"in step 4 of an older agent: backup complete, new volume partial", func(uuid string) {
			mk(uuid+"_data_reeve-backup", legacyLabels(uuid))
			writeVolume(t, cli, image, uuid+"_data_reeve-backup", data)
			mk(uuid+"_data", labels(uuid, newDef))
			writeVolume(t, cli, image, uuid+"_data", map[string]string{"a.txt": "alpha"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uuid := app(t, cli)
			tc.setup(uuid)
			removeHelpers(t, cli, image)
			spec := reeve.VolumeSpec{AppUUID: uuid, Name: "data", Volume: newDef}
			switch h, ok := volumeListed(uuid); {
			case !ok:
				if err := rt.CreateVolume(ctx, spec); err != nil {
					t.Fatalf("CreateVolume: %v", err)
				}
			case h == oldDef.ConfigHash():
				if err := rt.ReplaceVolume(ctx, spec); err != nil {
					t.Fatalf("ReplaceVolume: %v", err)
				}
			default:
				t.Fatalf("Snapshot lists the volume with hash %s: neither old nor missing", h)
			}
			if h, ok := volumeListed(uuid); !ok || h != newDef.ConfigHash() {
				t.Errorf("after recovery: volume listed %v with hash %s, want %s", ok, h, newDef.ConfigHash())
			}
			if diff := cmp.Diff(want, volumeFiles(t, cli, image, uuid+"_data")); diff != "" {
				t.Errorf("volume content (-want +got):\n%s", diff)
			}
			for _, b := range []string{bk(uuid), uuid + "_data_reeve-backup"} {
				if _, err := cli.VolumeInspect(ctx, b, client.VolumeInspectOptions{}); err == nil {
					t.Errorf("the backup volume %s is still there", b)
				}
			}
			v, err := cli.VolumeInspect(ctx, uuid+"_data", client.VolumeInspectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := v.Volume.Labels
			delete(got, docker.LabelRestoredFrom) // harmless once the backup is gone
			if diff := cmp.Diff(labels(uuid, newDef), got); diff != "" {
				t.Errorf("new volume labels (-want +got):\n%s", diff)
			}
			removeHelpers(t, cli, image)
			helpers, _ := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", docker.LabelHelper+"=true").Add("volume", uuid+"_data")})
			if len(helpers.Items) > 0 {
				t.Errorf("helper containers left: %d", len(helpers.Items))
			}
		})
	}
}

func TestCleanupRemovesLeftoverHelpers(t *testing.T) {
	testimage.RequireDocker(t)
	cli := engine(t)
	rt := newRuntime(t, docker.Options{})
	reg := testimage.StartRegistry(t)
	image := push(t, reg, rt, "reeve/cleanup", "v1")
	ctx := testCtx(t)
	if err := rt.Fetch(ctx, image, nil); err != nil {
		t.Fatal(err)
	}
	res, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{Image: image, Labels: map[string]string{docker.LabelHelper: "true"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		cli.ContainerRemove(c, res.ID, client.ContainerRemoveOptions{Force: true})
	})
	// Another runtime's helper may be in use: it goes once it is old.
	if err := rt.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ContainerInspect(ctx, res.ID, client.ContainerInspectOptions{}); err != nil {
		t.Errorf("Cleanup removed a fresh helper of another runtime: %v", err)
	}
	docker.SetHelperMaxAge(rt, 0)
	if err := rt.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ContainerInspect(ctx, res.ID, client.ContainerInspectOptions{}); err == nil {
		t.Error("Cleanup left an old helper container")
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// Two networks of one name (a create cut short by a crash landing after the
// next one) are reported as changed, so that the planner recreates them, and
// RemoveNetwork removes both.
func TestDuplicateNetworkReportedChanged(t *testing.T) {
	rt := newRuntime(t, docker.Options{})
	cli := engine(t)
	ctx := testCtx(t)
	appUUID := randomHex(16)
	spec := reeve.NetworkSpec{AppUUID: appUUID, Name: "back"}
	if err := rt.CreateNetwork(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		_ = rt.RemoveNetwork(cctx, appUUID, "back")
	})
	var first reeve.NetworkState
	snap, err := rt.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range snap.Networks {
		if n.AppUUID == appUUID {
			first = n
		}
	}
	if first.ConfigHash != spec.Network.ConfigHash() {
		t.Fatalf("network not reported as created: %+v", first)
	}
	// The second one, made as a racing create would make it.
	if _, err := cli.NetworkCreate(ctx, appUUID+"_back", client.NetworkCreateOptions{Labels: map[string]string{
		docker.LabelManaged: "true", docker.LabelAppUUID: appUUID, docker.LabelNetworkName: "back",
		docker.LabelConfigHash: spec.Network.ConfigHash(),
	}}); err != nil {
		t.Fatal(err)
	}
	snap, err = rt.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []reeve.NetworkState
	for _, n := range snap.Networks {
		if n.AppUUID == appUUID {
			got = append(got, n)
		}
	}
	if len(got) != 1 || got[0].ConfigHash != "" {
		t.Fatalf("duplicate networks reported as %+v, want one entry with an empty config hash", got)
	}
	if err := rt.RemoveNetwork(ctx, appUUID, "back"); err != nil {
		t.Fatal(err)
	}
	list, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: client.Filters{}.Add("name", appUUID)})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Fatalf("%d networks left after RemoveNetwork", len(list.Items))
	}
}

// TestFetchRefusesWhatDoesNotFit: with more spare space asked for than the
// engine's disk has, Fetch refuses with ErrNoSpace, says how much is
// needed and free, and downloads nothing; with the check off the same
// image comes down.
func TestFetchRefusesWhatDoesNotFit(t *testing.T) {
	testimage.RequireDocker(t)
	reg := testimage.StartRegistry(t)
	ref := reg.Push(t, "space", "v1", map[string]string{"/version": "v1"})
	ctx := testCtx(t)
	rt := newRuntime(t, docker.Options{Namespace: "space-" + randomHex(4), ReserveBytes: 1 << 60})
	err := rt.Fetch(ctx, ref, nil)
	if !errors.Is(err, runtime.ErrNoSpace) || !strings.Contains(err.Error(), "free") || !strings.Contains(err.Error(), "MiB") {
		t.Fatalf("Fetch with no room: %v, want ErrNoSpace saying what is needed and free", err)
	}
	snap, err := rt.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range snap.Images {
		if slices.Contains(img.Refs, ref) {
			t.Fatal("a refused image was downloaded")
		}
	}
	open := newRuntime(t, docker.Options{Namespace: "space-" + randomHex(4), ReserveBytes: -1})
	if err := open.Fetch(ctx, ref, nil); err != nil {
		t.Fatalf("Fetch with the check off: %v", err)
	}
	t.Cleanup(func() {
		c, cancel := cleanupCtx()
		defer cancel()
		_ = open.RemoveImage(c, ref)
	})
	// Once the image is there, the check has nothing to download to refuse.
	if err := rt.Fetch(ctx, ref, nil); err != nil {
		t.Fatalf("Fetch of an image already there: %v", err)
	}
}
