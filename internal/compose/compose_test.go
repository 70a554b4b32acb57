package compose

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
)

func load(t *testing.T, yml string, opts Options) (reeve.Release, error) {
	t.Helper()
	return Load(context.Background(), []byte(yml), opts)
}

func mustLoad(t *testing.T, yml string, opts Options) reeve.Release {
	t.Helper()
	rel, err := load(t, yml, opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return rel
}

// problemsOf returns the problems of a Load error, failing the test when
// err is not a *reeve.ValidationError.
func problemsOf(t *testing.T, err error) []reeve.Problem {
	t.Helper()
	if err == nil {
		t.Fatal("Load succeeded, want a validation error")
	}
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Load error is %T (%v), want *reeve.ValidationError", err, err)
	}
	if len(ve.Problems) == 0 {
		t.Fatal("validation error without problems")
	}
	if reeve.ErrorCode(err) != reeve.CodeInvalid {
		t.Fatalf("ErrorCode = %q, want %q", reeve.ErrorCode(err), reeve.CodeInvalid)
	}
	return ve.Problems
}

// wantProblem fails unless a problem has exactly path and a message holding
// every one of subs.
func wantProblem(t *testing.T, ps []reeve.Problem, path string, subs ...string) {
	t.Helper()
	for _, p := range ps {
		if p.Path != path {
			continue
		}
		ok := true
		for _, s := range subs {
			if !strings.Contains(p.Message, s) {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	t.Errorf("no problem at %q with %q; got:\n%s", path, subs, dump(ps))
}

func dump(ps []reeve.Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString("  " + p.String() + "\n")
	}
	return b.String()
}

func TestLoadFull(t *testing.T) {
	data, err := os.ReadFile("testdata/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := Load(context.Background(), data, Options{
		WorkingDir: "/srv/demo",
		Env:        map[string]string{"API_KEY": "k-123", "FROM_ENV": "from the env"},
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	dur := func(s string) reeve.Duration {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return reeve.Duration(d)
	}
	want := reeve.Release{
		Services: map[string]reeve.Service{
			"web": {
				Image:   "registry.example.com/demo/web:1.0",
				Running: true,
				Environment: map[string]string{
					"MODE":     "production",
					"API_KEY":  "k-123",
					"FROM_ENV": "from the env",
					"PRICE":    "$5",
				},
				Labels: map[string]string{"io.reeve.update.strategy": "hand-over"},
				Composition: reeve.Composition{
					Command:    []string{"serve", "--port", "8080"},
					Entrypoint: []string{"/bin/entry", "--flag", "two words"},
					Ports: []reeve.Port{
						{Target: 80, Published: 8080, Protocol: "tcp"},
						{Target: 53, Published: 5353, HostIP: "127.0.0.1", Protocol: "udp"},
						{Target: 9000, Published: 9000, Protocol: "tcp"},
						{Target: 9001, Published: 9001, Protocol: "tcp"},
						{Target: 443, Published: 8443, HostIP: "0.0.0.0", Protocol: "tcp"},
						{Target: 3000, Protocol: "tcp"},
						{Target: 3001, Protocol: "tcp"},
					},
					Restart:   "unless-stopped",
					DependsOn: map[string]reeve.Dependency{"db": {Condition: reeve.ConditionStarted}},
					Healthcheck: &reeve.Healthcheck{
						Test:        []string{"CMD", "curl", "-f", "http://localhost/"},
						Interval:    dur("30s"),
						Timeout:     dur("5s"),
						StartPeriod: dur("1m"),
						Retries:     3,
					},
					Networks: map[string]reeve.ServiceNetwork{
						"front": {Aliases: []string{"www", "site"}},
						"back":  {IPv4Address: "172.28.0.10"},
					},
					Volumes: []reeve.Mount{
						{Type: reeve.MountVolume, Source: "data", Target: "/var/lib/web"},
						{Type: reeve.MountBind, Source: "/srv/demo/config", Target: "/etc/web", ReadOnly: true},
						{Type: reeve.MountVolume, Target: "/var/cache/web"},
						{Type: reeve.MountTmpfs, Target: "/run/web"},
						{Type: reeve.MountBind, Source: "/srv/logs", Target: "/logs", ReadOnly: true},
					},
					Devices: []reeve.DeviceMapping{
						{Host: "/dev/ttyUSB0", Container: "/dev/ttyUSB0", Permissions: "rwm"},
						{Host: "/dev/i2c-1", Container: "/dev/i2c-1", Permissions: "rwm"},
						{Host: "/dev/gpiomem", Container: "/dev/gpio", Permissions: "rw"},
					},
					CapAdd:          []string{"NET_ADMIN", "SYS_TIME"},
					CapDrop:         []string{"MKNOD"},
					Privileged:      true,
					WorkingDir:      "/app",
					User:            "1000:1000",
					StopGracePeriod: dur("1m30s"),
					Tmpfs:           []string{"/tmp"},
					Sysctls:         map[string]string{"net.core.somaxconn": "1024"},
					Ulimits: map[string]reeve.Ulimit{
						"nofile": {Soft: 1024, Hard: 2048},
						"nproc":  {Soft: 512, Hard: 512},
					},
				},
			},
			"db": {
				Image:   "postgres:16",
				Running: true,
				Environment: map[string]string{
					"POSTGRES_PASSWORD": "secret",
					"PGDATA":            "/var/lib/postgresql/data/pgdata",
				},
				Labels: map[string]string{"com.example.role": "db"},
				Composition: reeve.Composition{
					Volumes: []reeve.Mount{
						{Type: reeve.MountVolume, Source: "dbdata", Target: "/var/lib/postgresql/data"},
					},
					Networks:    map[string]reeve.ServiceNetwork{"back": {}},
					Healthcheck: &reeve.Healthcheck{Test: []string{"CMD-SHELL", "pg_isready -U postgres"}},
					Tmpfs:       []string{"/run", "/var/run/postgresql:size=16m"},
					Sysctls:     map[string]string{"net.ipv4.tcp_keepalive_time": "600"},
				},
			},
			"worker": {
				Image:   "registry.example.com/demo/worker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
				Running: true,
				Composition: reeve.Composition{
					DependsOn: map[string]reeve.Dependency{
						"db":      {Condition: reeve.ConditionHealthy},
						"migrate": {Condition: reeve.ConditionCompleted},
						"web":     {Condition: reeve.ConditionStarted},
					},
					NetworkMode: "host",
				},
			},
			"migrate": {
				Image:   "migrate",
				Running: true,
				Composition: reeve.Composition{
					Restart:     "no",
					Healthcheck: &reeve.Healthcheck{Disable: true},
					Networks:    map[string]reeve.ServiceNetwork{"default": {}},
				},
			},
			"sidecar": {
				Image:   "sidecar:2",
				Running: true,
				Composition: reeve.Composition{
					NetworkMode: "service:web",
					// compose makes a service that shares another's network
					// depend on it
					DependsOn: map[string]reeve.Dependency{"web": {Condition: reeve.ConditionStarted}},
				},
			},
		},
		Networks: map[string]reeve.Network{
			"default": {},
			"front": {
				Driver:     "bridge",
				DriverOpts: map[string]string{"com.docker.network.bridge.name": "br-front"},
				Labels:     map[string]string{"com.example.net": "front"},
			},
			"back": {
				Internal:   true,
				EnableIPv6: true,
				IPAM: &reeve.IPAM{
					Driver: "default",
					Config: []reeve.IPAMConfig{{Subnet: "172.28.0.0/16", IPRange: "172.28.5.0/24", Gateway: "172.28.0.1"}},
				},
			},
		},
		Volumes: map[string]reeve.Volume{
			"data": {},
			"dbdata": {
				Driver:     "local",
				DriverOpts: map[string]string{"type": "none", "o": "bind", "device": "/mnt/db"},
				Labels:     map[string]string{"com.example.vol": "db"},
			},
		},
	}
	if diff := cmp.Diff(want, rel); diff != "" {
		t.Errorf("release mismatch (-want +got):\n%s", diff)
	}
}

func TestUnsupportedServiceKeys(t *testing.T) {
	tests := []struct {
		key, value string
		msg        string // part of the message beyond "not supported"
	}{
		{"build", ".", "build the image and push it to a registry, then name it under image"},
		{"build", "{context: ., dockerfile: Dockerfile}", "push it to a registry"},
		{"container_name", "web1", "reeve names containers itself"},
		{"deploy", "{replicas: 2}", "remove deploy"},
		{"secrets", "[token]", "environment variables"},
		{"configs", "[conf]", ""},
		{"extends", "{service: base}", "write the service out in full"},
		{"profiles", "[debug]", "remove profiles"},
		{"links", "[db]", "service name"},
		{"external_links", "[other_db]", ""},
		{"pid", "host", "remove it"},
		{"ipc", "host", "remove it"},
		{"logging", "{driver: json-file}", "logs"},
		{"mem_limit", "512m", "remove it"},
		{"env_file", ".env", "environment"},
		{"expose", "[\"80\"]", "ports"},
		{"hostname", "web", ""},
		{"dns", "[8.8.8.8]", ""},
		{"extra_hosts", "[\"somehost:162.242.195.82\"]", ""},
		{"init", "true", ""},
		{"read_only", "true", ""},
		{"shm_size", "64m", ""},
		{"stop_signal", "SIGINT", ""},
		{"security_opt", "[\"no-new-privileges:true\"]", ""},
		{"volumes_from", "[db]", "named volume"},
		{"cpus", "0.5", ""},
		{"platform", "linux/arm64", ""},
		{"pull_policy", "always", ""},
		{"tty", "true", ""},
		{"stdin_open", "true", ""},
		{"runtime", "runc", ""},
		{"scale", "2", ""},
		{"userns_mode", "host", ""},
		{"group_add", "[dialout]", ""},
		{"mac_address", "02:42:ac:11:65:43", ""},
		{"oom_score_adj", "500", ""},
		{"label_file", "labels.txt", ""},
		{"annotations", "{a: b}", ""},
		{"gpus", "all", ""},
		{"develop", "{watch: []}", ""},
		{"no_such_key", "1", "remove it"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			yml := "services:\n  web:\n    image: nginx\n    " + tt.key + ": " + tt.value + "\n"
			_, err := load(t, yml, Options{})
			ps := problemsOf(t, err)
			if len(ps) != 1 {
				t.Errorf("want one problem, got:\n%s", dump(ps))
			}
			wantProblem(t, ps, "services.web."+tt.key, "not supported", tt.msg)
		})
	}
}

func TestBuildMessage(t *testing.T) {
	_, err := load(t, "services:\n  web:\n    build: .\n", Options{})
	ps := problemsOf(t, err)
	want := "services.web.build: not supported: build the image and push it to a registry, then name it under image"
	if len(ps) != 1 || ps[0].String() != want {
		t.Errorf("got:\n%s\nwant %q", dump(ps), want)
	}
}

func TestUnsupportedNestedKeys(t *testing.T) {
	tests := []struct {
		name, yml, path, msg string
	}{
		{"port mode", "services:\n  web:\n    image: nginx\n    ports: [{target: 80, mode: host}]\n", "services.web.ports[0].mode", "not supported"},
		{"port app_protocol", "services:\n  web:\n    image: nginx\n    ports: [\"81\", {target: 80, app_protocol: http}]\n", "services.web.ports[1].app_protocol", "not supported"},
		{"depends_on restart", "services:\n  web:\n    image: nginx\n    depends_on: {db: {condition: service_started, restart: true}}\n  db:\n    image: db\n", "services.web.depends_on.db.restart", "not supported"},
		{"depends_on optional", "services:\n  web:\n    image: nginx\n    depends_on: {db: {condition: service_started, required: false}}\n  db:\n    image: db\n", "services.web.depends_on.db.required", "required"},
		{"healthcheck start_interval", "services:\n  web:\n    image: nginx\n    healthcheck: {test: [CMD, 'true'], start_interval: 1s}\n", "services.web.healthcheck.start_interval", "not supported"},
		{"network ipv6_address", "services:\n  web:\n    image: nginx\n    networks: {front: {ipv6_address: '::1'}}\nnetworks:\n  front:\n", "services.web.networks.front.ipv6_address", "not supported"},
		{"network priority", "services:\n  web:\n    image: nginx\n    networks: {front: {priority: 10}}\nnetworks:\n  front:\n", "services.web.networks.front.priority", "not supported"},
		{"bind propagation", "services:\n  web:\n    image: nginx\n    volumes: [{type: bind, source: /a, target: /a, bind: {propagation: rshared}}]\n", "services.web.volumes[0].bind.propagation", "not supported"},
		{"bind create_host_path false", "services:\n  web:\n    image: nginx\n    volumes: [{type: bind, source: /a, target: /a, bind: {create_host_path: false}}]\n", "services.web.volumes[0].bind.create_host_path", "not supported"},
		{"volume nocopy", "services:\n  web:\n    image: nginx\n    volumes: [{type: volume, source: d, target: /a, volume: {nocopy: true}}]\nvolumes:\n  d:\n", "services.web.volumes[0].volume.nocopy", "not supported"},
		{"volume subpath", "services:\n  web:\n    image: nginx\n    volumes: [{type: volume, source: d, target: /a, volume: {subpath: x}}]\nvolumes:\n  d:\n", "services.web.volumes[0].volume.subpath", "not supported"},
		{"volume consistency", "services:\n  web:\n    image: nginx\n    volumes: [{type: bind, source: /a, target: /a, consistency: cached}]\n", "services.web.volumes[0].consistency", "not supported"},
		{"tmpfs size", "services:\n  web:\n    image: nginx\n    volumes: [{type: tmpfs, target: /a, tmpfs: {size: 1000}}]\n", "services.web.volumes[0].tmpfs", "tmpfs key"},
		{"short volume selinux", "services:\n  web:\n    image: nginx\n    volumes: [\"/a:/a:z\"]\n", "services.web.volumes[0]", `option "z"`},
		{"short volume nocopy", "services:\n  web:\n    image: nginx\n    volumes: [\"/b:/b:ro\", \"d:/a:nocopy\"]\nvolumes:\n  d:\n", "services.web.volumes[1]", `option "nocopy"`},
		{"short volume unknown option", "services:\n  web:\n    image: nginx\n    volumes: [\"/a:/a:ro,bogus\"]\n", "services.web.volumes[0]", `option "bogus"`},
		{"device long form extra", "services:\n  web:\n    image: nginx\n    devices: [{source: /dev/a, target: /dev/a, cgroup: x}]\n", "services.web.devices[0].cgroup", "not supported"},
		{"external network", "services:\n  web:\n    image: nginx\n    networks: [ext]\nnetworks:\n  ext:\n    external: true\n", "networks.ext.external", "external networks are not supported"},
		{"external network interpolated", "services:\n  web:\n    image: nginx\n    networks: [ext]\nnetworks:\n  ext:\n    external: ${EXT:-true}\n", "networks.ext.external", "external networks are not supported"},
		{"network name", "services:\n  web:\n    image: nginx\nnetworks:\n  n:\n    name: other\n", "networks.n.name", "reeve names networks itself"},
		{"network attachable", "services:\n  web:\n    image: nginx\nnetworks:\n  n:\n    attachable: true\n", "networks.n.attachable", "not supported"},
		{"ipam options", "services:\n  web:\n    image: nginx\nnetworks:\n  n:\n    ipam: {options: {a: b}}\n", "networks.n.ipam.options", "not supported"},
		{"ipam aux_addresses", "services:\n  web:\n    image: nginx\nnetworks:\n  n:\n    ipam: {config: [{subnet: 10.1.0.0/16, aux_addresses: {a: 10.1.0.5}}]}\n", "networks.n.ipam.config[0].aux_addresses", "not supported"},
		{"external volume", "services:\n  web:\n    image: nginx\n    volumes: [\"d:/d\"]\nvolumes:\n  d:\n    external: true\n", "volumes.d.external", "external volumes are not supported"},
		{"volume name", "services:\n  web:\n    image: nginx\nvolumes:\n  d:\n    name: other\n", "volumes.d.name", "reeve names volumes itself"},
		{"top secrets", "services:\n  web:\n    image: nginx\nsecrets:\n  s:\n    file: ./s\n", "secrets", "not supported"},
		{"top configs", "services:\n  web:\n    image: nginx\nconfigs:\n  c:\n    file: ./c\n", "configs", "not supported"},
		{"top include", "include: [other.yml]\nservices:\n  web:\n    image: nginx\n", "include", "one compose file"},
		{"top unknown", "services:\n  web:\n    image: nginx\nflavour: vanilla\n", "flavour", "not supported"},
		{"top jobs", "services:\n  web:\n    image: nginx\njobs:\n  j:\n    image: x\n", "jobs", "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{})
			wantProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
}

// TestAcceptedDefaults: keys reeve would refuse with another value are
// accepted when they hold compose's default, and extension fields pass.
func TestAcceptedDefaults(t *testing.T) {
	yml := `
x-base: &base
  image: nginx
services:
  web:
    <<: *base
    x-note: anything
    depends_on:
      db: {condition: service_started, required: true, restart: false}
    volumes:
      - {type: bind, source: /a, target: /a, bind: {create_host_path: true}}
      - {type: volume, source: d, target: /d, volume: {nocopy: false}}
      - /b:/b:rw
  db:
    image: db
networks:
  n:
    external: false
volumes:
  d:
    external: false
`
	rel := mustLoad(t, yml, Options{})
	if got := rel.Services["web"].Image; got != "nginx" {
		t.Errorf("image from anchor = %q", got)
	}
	if got := len(rel.Services["web"].Composition.Volumes); got != 3 {
		t.Errorf("%d volumes, want 3", got)
	}
	if _, ok := rel.Networks["n"]; !ok {
		t.Error("network n missing")
	}
}

func TestInterpolation(t *testing.T) {
	yml := `
name: ${PROJECT:-demo}
services:
  web:
    image: registry.example.com/${REPO}:${TAG:-latest}
    command: ["run", "--name", "${COMPOSE_PROJECT_NAME}", "--level=${LEVEL-info}", "$${NOT_A_VAR}"]
    environment:
      GREETING: hello ${WHO:-world}
      EMPTY_DEFAULT: "${UNSET:-}"
    ports:
      - "${PORT:-8080}:80"
      - target: ${TARGET}
        published: "${PUB}"
`
	tests := []struct {
		name    string
		opts    Options
		image   string
		command []string
		env     map[string]string
		ports   []reeve.Port
	}{
		{
			name:  "defaults",
			opts:  Options{Env: map[string]string{"REPO": "app", "TARGET": "81", "PUB": "9081"}},
			image: "registry.example.com/app:latest", command: []string{"run", "--name", "demo", "--level=info", "${NOT_A_VAR}"},
			env:   map[string]string{"GREETING": "hello world", "EMPTY_DEFAULT": ""},
			ports: []reeve.Port{{Target: 80, Published: 8080, Protocol: "tcp"}, {Target: 81, Published: 9081, Protocol: "tcp"}},
		},
		{
			name: "set",
			opts: Options{ProjectName: "Fleet_One", Env: map[string]string{
				"REPO": "other", "TAG": "2.1", "LEVEL": "", "WHO": "you", "PORT": "9090", "TARGET": "82", "PUB": "9082", "PROJECT": "ignored",
			}},
			image: "registry.example.com/other:2.1", command: []string{"run", "--name", "fleet_one", "--level=", "${NOT_A_VAR}"},
			env:   map[string]string{"GREETING": "hello you", "EMPTY_DEFAULT": ""},
			ports: []reeve.Port{{Target: 80, Published: 9090, Protocol: "tcp"}, {Target: 82, Published: 9082, Protocol: "tcp"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rel := mustLoad(t, yml, tt.opts)
			web := rel.Services["web"]
			if web.Image != tt.image {
				t.Errorf("image = %q, want %q", web.Image, tt.image)
			}
			if diff := cmp.Diff(tt.command, web.Composition.Command); diff != "" {
				t.Errorf("command (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.env, web.Environment); diff != "" {
				t.Errorf("environment (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.ports, web.Composition.Ports); diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInterpolationProblems(t *testing.T) {
	tests := []struct {
		name, yml string
		env       map[string]string
		path, msg string
	}{
		{"unset", "services:\n  web:\n    image: app:${TAG}\n", nil, "services.web.image", "variable TAG is not set"},
		{"unset bare", "services:\n  web:\n    image: $IMAGE\n", map[string]string{"OTHER": "x"}, "services.web.image", "variable IMAGE is not set"},
		{"unset in list", "services:\n  web:\n    image: app\n    command: [a, \"${ARG}\"]\n", nil, "services.web.command[1]", "variable ARG is not set"},
		{"unset in port", "services:\n  web:\n    image: app\n    ports: [\"${P}:80\"]\n", nil, "services.web.ports[0]", "variable P is not set"},
		{"required", "services:\n  web:\n    image: ${IMAGE:?name the image}\n", nil, "services.web.image", "variable IMAGE is required: name the image"},
		{"invalid", "services:\n  web:\n    image: app\n    command: \"echo ${}\"\n", nil, "services.web.command", "$$"},
		{"env entry without value", "services:\n  web:\n    image: app\n    environment: [TOKEN]\n", nil, "services.web.environment.TOKEN", "TOKEN has no value"},
		{"env map entry without value", "services:\n  web:\n    image: app\n    environment:\n      TOKEN:\n", map[string]string{"OTHER": "1"}, "services.web.environment.TOKEN", "TOKEN has no value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{Env: tt.env})
			wantProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
}

func TestEnvironmentFromEnv(t *testing.T) {
	yml := "services:\n  web:\n    image: app\n    environment: [TOKEN, MODE=x]\n"
	rel := mustLoad(t, yml, Options{Env: map[string]string{"TOKEN": "t0k", "UNUSED": "u"}})
	want := map[string]string{"TOKEN": "t0k", "MODE": "x"}
	if diff := cmp.Diff(want, rel.Services["web"].Environment); diff != "" {
		t.Errorf("environment (-want +got):\n%s", diff)
	}
}

func TestPorts(t *testing.T) {
	tcp := func(target, published uint16) reeve.Port {
		return reeve.Port{Target: target, Published: published, Protocol: "tcp"}
	}
	tests := []struct {
		name  string
		ports string
		want  []reeve.Port
	}{
		{"range", `["8000-8002:8000-8002"]`, []reeve.Port{tcp(8000, 8000), tcp(8001, 8001), tcp(8002, 8002)}},
		{"range shifted", `["9000-9001:8000-8001"]`, []reeve.Port{tcp(8000, 9000), tcp(8001, 9001)}},
		{"range numeric order", `["998-1001:998-1001"]`, []reeve.Port{tcp(998, 998), tcp(999, 999), tcp(1000, 1000), tcp(1001, 1001)}},
		{"container range", `["7000-7001"]`, []reeve.Port{tcp(7000, 0), tcp(7001, 0)}},
		{"udp range with host ip", `["127.0.0.1:5000-5001:5000-5001/udp"]`, []reeve.Port{
			{Target: 5000, Published: 5000, HostIP: "127.0.0.1", Protocol: "udp"},
			{Target: 5001, Published: 5001, HostIP: "127.0.0.1", Protocol: "udp"},
		}},
		{"host ip no published", `["127.0.0.1::80"]`, []reeve.Port{{Target: 80, HostIP: "127.0.0.1", Protocol: "tcp"}}},
		{"number", `[80]`, []reeve.Port{tcp(80, 0)}},
		{"long form", `[{target: 80, published: "8080", protocol: UDP}]`, []reeve.Port{{Target: 80, Published: 8080, Protocol: "udp"}}},
		{"long form target only", `[{target: 80}]`, []reeve.Port{tcp(80, 0)}},
		{"duplicate listed once", `["80:80", "80:80"]`, []reeve.Port{tcp(80, 80)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rel := mustLoad(t, "services:\n  web:\n    image: nginx\n    ports: "+tt.ports+"\n", Options{})
			if diff := cmp.Diff(tt.want, rel.Services["web"].Composition.Ports); diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPortProblems(t *testing.T) {
	tests := []struct {
		name, ports, path, msg string
	}{
		{"host range for one port", `["8000-8002:8000"]`, "services.web.ports[0]", "range of host ports"},
		{"long published range", `["81", {target: 80, published: "8000-8001"}]`, "services.web.ports[1]", "range of host ports"},
		{"bad protocol after range", `["8000-8002:8000-8002", {target: 80, protocol: icmp}]`, "services.web.ports[1]", `unknown protocol "icmp"`},
		{"bad host ip after range", `["8000-8002:8000-8002", "81", {target: 80, host_ip: nowhere}]`, "services.web.ports[2]", `invalid host_ip "nowhere"`},
		{"target out of range", `[{target: 70000}]`, "services.web.ports[0]", "out of range"},
		{"unparsable", `["81", "80:80:80:80"]`, "services.web.ports[1]", "invalid port"},
		{"host port out of range", `["99999:80"]`, "services.web.ports[0]", "invalid port"},
		{"long target not a number", `["81", {target: "x"}]`, "services.web.ports[1]", "invalid target port"},
		{"long host ip invalid", `["81", {target: 80, host_ip: "1.2.3"}]`, "services.web.ports[1]", "invalid host_ip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, "services:\n  web:\n    image: nginx\n    ports: "+tt.ports+"\n", Options{})
			wantProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
}

func TestDependsOn(t *testing.T) {
	tests := []struct {
		name, deps string
		want       map[string]reeve.Dependency
	}{
		{"short", "[db, cache]", map[string]reeve.Dependency{
			"db": {Condition: reeve.ConditionStarted}, "cache": {Condition: reeve.ConditionStarted},
		}},
		{"long", "{db: {condition: service_healthy}, cache: {condition: service_started}, init: {condition: service_completed_successfully}}", map[string]reeve.Dependency{
			"db": {Condition: reeve.ConditionHealthy}, "cache": {Condition: reeve.ConditionStarted}, "init": {Condition: reeve.ConditionCompleted},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yml := "services:\n  web:\n    image: app\n    depends_on: " + tt.deps +
				"\n  db:\n    image: db\n  cache:\n    image: cache\n  init:\n    image: init\n"
			rel := mustLoad(t, yml, Options{})
			if diff := cmp.Diff(tt.want, rel.Services["web"].Composition.DependsOn); diff != "" {
				t.Errorf("depends_on (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDependsOnProblems(t *testing.T) {
	tests := []struct {
		name, yml, path, msg string
	}{
		{"unknown service", "services:\n  web:\n    image: app\n    depends_on: [nope]\n", "services.web.depends_on.nope", `"nope"`},
		{"unknown condition", "services:\n  web:\n    image: app\n    depends_on: {db: {condition: service_ready}}\n  db:\n    image: db\n", "services.web.depends_on.db", ""},
		{"cycle", "services:\n  a:\n    image: app\n    depends_on: [b]\n  b:\n    image: app\n    depends_on: [a]\n", "services", "cycle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{})
			ps := problemsOf(t, err)
			found := false
			for _, p := range ps {
				if strings.HasPrefix(p.Path, tt.path) && strings.Contains(p.Message, tt.msg) {
					found = true
				}
			}
			if !found {
				t.Errorf("no problem under %q with %q; got:\n%s", tt.path, tt.msg, dump(ps))
			}
		})
	}
}

func TestDefaultNetwork(t *testing.T) {
	tests := []struct {
		name         string
		yml          string
		wantNetworks []string                                   // release networks
		wantService  map[string]map[string]reeve.ServiceNetwork // per service
	}{
		{
			name:         "implicit",
			yml:          "services:\n  web:\n    image: app\n  db:\n    image: db\n",
			wantNetworks: []string{"default"},
			wantService: map[string]map[string]reeve.ServiceNetwork{
				"web": {"default": {}}, "db": {"default": {}},
			},
		},
		{
			name:         "explicit networks only",
			yml:          "services:\n  web:\n    image: app\n    networks: [front]\nnetworks:\n  front:\n",
			wantNetworks: []string{"front"},
			wantService:  map[string]map[string]reeve.ServiceNetwork{"web": {"front": {}}},
		},
		{
			name:         "network_mode host",
			yml:          "services:\n  web:\n    image: app\n    network_mode: host\n",
			wantNetworks: nil,
			wantService:  map[string]map[string]reeve.ServiceNetwork{"web": nil},
		},
		{
			name: "mixed",
			yml: "services:\n  web:\n    image: app\n    networks: [front, default]\n  db:\n    image: db\n    networks:\n      front:\n        aliases: [database]\n" +
				"  tool:\n    image: tool\nnetworks:\n  front:\n",
			wantNetworks: []string{"default", "front"},
			wantService: map[string]map[string]reeve.ServiceNetwork{
				"web":  {"front": {}, "default": {}},
				"db":   {"front": {Aliases: []string{"database"}}},
				"tool": {"default": {}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rel := mustLoad(t, tt.yml, Options{})
			var got []string
			for _, n := range sortedKeys(rel.Networks) {
				got = append(got, n)
			}
			if diff := cmp.Diff(tt.wantNetworks, got); diff != "" {
				t.Errorf("release networks (-want +got):\n%s", diff)
			}
			for svc, want := range tt.wantService {
				if diff := cmp.Diff(want, rel.Services[svc].Composition.Networks); diff != "" {
					t.Errorf("service %s networks (-want +got):\n%s", svc, diff)
				}
			}
		})
	}
}

func TestDefaultNetworkCustomized(t *testing.T) {
	yml := "services:\n  web:\n    image: app\nnetworks:\n  default:\n    driver_opts:\n      com.docker.network.driver.mtu: \"1400\"\n"
	rel := mustLoad(t, yml, Options{})
	want := map[string]reeve.Network{"default": {DriverOpts: map[string]string{"com.docker.network.driver.mtu": "1400"}}}
	if diff := cmp.Diff(want, rel.Networks); diff != "" {
		t.Errorf("networks (-want +got):\n%s", diff)
	}
}

func TestVolumes(t *testing.T) {
	tests := []struct {
		name, volumes string
		workingDir    string
		want          []reeve.Mount
	}{
		{"short named", `["data:/data"]`, "", []reeve.Mount{{Type: reeve.MountVolume, Source: "data", Target: "/data"}}},
		{"short named ro", `["data:/data:ro"]`, "", []reeve.Mount{{Type: reeve.MountVolume, Source: "data", Target: "/data", ReadOnly: true}}},
		{"short bind", `["/srv/x:/x"]`, "", []reeve.Mount{{Type: reeve.MountBind, Source: "/srv/x", Target: "/x"}}},
		{"short relative bind", `["./conf:/conf:ro", "../shared:/shared"]`, "/srv/app", []reeve.Mount{
			{Type: reeve.MountBind, Source: "/srv/app/conf", Target: "/conf", ReadOnly: true},
			{Type: reeve.MountBind, Source: "/srv/shared", Target: "/shared"},
		}},
		{"short anonymous", `["/cache"]`, "", []reeve.Mount{{Type: reeve.MountVolume, Target: "/cache"}}},
		{"long named", `[{type: volume, source: data, target: /data, read_only: true}]`, "", []reeve.Mount{{Type: reeve.MountVolume, Source: "data", Target: "/data", ReadOnly: true}}},
		{"long bind relative", `[{type: bind, source: conf, target: /conf}]`, "/srv/app", []reeve.Mount{{Type: reeve.MountBind, Source: "/srv/app/conf", Target: "/conf"}}},
		{"long anonymous", `[{type: volume, target: /cache}]`, "", []reeve.Mount{{Type: reeve.MountVolume, Target: "/cache"}}},
		{"long tmpfs", `[{type: tmpfs, target: /run/x}]`, "", []reeve.Mount{{Type: reeve.MountTmpfs, Target: "/run/x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yml := "services:\n  web:\n    image: app\n    volumes: " + tt.volumes + "\nvolumes:\n  data:\n"
			rel := mustLoad(t, yml, Options{WorkingDir: tt.workingDir})
			if diff := cmp.Diff(tt.want, rel.Services["web"].Composition.Volumes); diff != "" {
				t.Errorf("volumes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVolumeProblems(t *testing.T) {
	tests := []struct {
		name, yml, path string
		msg             []string
	}{
		{"relative bind without working dir", "services:\n  web:\n    image: app\n    volumes: [\"./conf:/conf\"]\n",
			"services.web.volumes[0]", []string{"./conf", "absolute"}},
		{"long relative bind without working dir", "services:\n  web:\n    image: app\n    volumes: [{type: bind, source: conf, target: /conf}]\n",
			"services.web.volumes[0]", []string{"conf", "absolute"}},
		{"home bind", "services:\n  web:\n    image: app\n    volumes: [\"~/conf:/conf\"]\n",
			"services.web.volumes[0]", []string{"~/conf", "absolute"}},
		{"undeclared named volume", "services:\n  web:\n    image: app\n    volumes: [\"/a:/a\", \"data:/data\"]\n",
			"services.web.volumes[1]", []string{`"data"`, "top-level volumes"}},
		{"relative target", "services:\n  web:\n    image: app\n    volumes: [{type: tmpfs, target: run}]\n",
			"services.web.volumes[0]", []string{"absolute"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{})
			wantProblem(t, problemsOf(t, err), tt.path, tt.msg...)
		})
	}
}

func TestYAMLErrors(t *testing.T) {
	tests := []struct {
		name, yml string
		line      string
	}{
		{"unclosed flow", "services:\n  web:\n    image: app\n    command: [a, b\n", "line 4"},
		{"tab indent", "services:\n  web:\n\timage: app\n", "line 3"},
		{"bad mapping", "services:\n  web:\n    image: app\n    ports: a: b\n", "line 4"},
		{"duplicate key", "services:\n  web:\n    image: app\n    image: other\n", "line 4"},
		{"reset tag", "services:\n  web:\n    image: app\n    ports: !reset []\n", "line 4"},
		{"two documents", "services:\n  web:\n    image: app\n---\nservices: {}\n", "line 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{})
			ps := problemsOf(t, err)
			if len(ps) != 1 {
				t.Errorf("want one problem, got:\n%s", dump(ps))
			}
			if !strings.Contains(ps[0].Message, tt.line) {
				t.Errorf("problem %q does not name %s", ps[0], tt.line)
			}
		})
	}
}

func TestShapeProblems(t *testing.T) {
	tests := []struct {
		name, yml, path, msg string
	}{
		{"empty", "", "", "empty"},
		{"comments only", "# nothing\n", "", "empty"},
		{"list", "- a\n- b\n", "", "mapping"},
		{"scalar", "hello\n", "", "mapping"},
		{"no services", "name: x\n", "services", "at least one service"},
		{"services list", "services: [web]\n", "services", ""},
		{"non-string key", "services:\n  web:\n    image: app\n    sysctls: {1: 2}\n", "services.web.sysctls", "quote"},
		{"missing image", "services:\n  web:\n    restart: always\n", "services.web.image", "required"},
		{"image type", "services:\n  web:\n    image: [a]\n", "services.web.image", "string"},
		{"bad image", "services:\n  web:\n    image: \"Not A/Valid Image\"\n", "services.web.image", "invalid reference"},
		{"bad restart", "services:\n  web:\n    image: app\n    restart: sometimes\n", "services.web.restart", "restart policy"},
		{"bad bool", "services:\n  web:\n    image: app\n    privileged: maybe\n", "services.web.privileged", "boolean"},
		{"bad duration", "services:\n  web:\n    image: app\n    stop_grace_period: soon\n", "services.web.stop_grace_period", "duration"},
		{"negative retries", "services:\n  web:\n    image: app\n    healthcheck: {test: [CMD, x], retries: -1}\n", "services.web.healthcheck.retries", ""},
		{"reserved label", "services:\n  web:\n    image: app\n    labels: {io.reeve.app-id: \"1\"}\n", "services.web.labels.io.reeve.app-id", "set by reeve"},
		{"empty command", "services:\n  web:\n    image: app\n    command: []\n", "services.web.command", "empty command"},
		{"empty entrypoint", "services:\n  web:\n    image: app\n    entrypoint: \"\"\n", "services.web.entrypoint", "empty entrypoint"},
		{"unknown network", "services:\n  web:\n    image: app\n    networks: [nope]\n", "services.web.networks.nope", "not defined"},
		{"bad subnet", "services:\n  web:\n    image: app\nnetworks:\n  n:\n    ipam: {config: [{subnet: nope}]}\n", "networks.n.ipam.config[0].subnet", "CIDR"},
		{"networks with network_mode", "services:\n  web:\n    image: app\n    network_mode: host\n    networks: [n]\nnetworks:\n  n:\n", "services.web.networks", "network_mode"},
		{"network_mode unknown service", "services:\n  web:\n    image: app\n    network_mode: \"service:nope\"\n", "services.web.network_mode", `"nope"`},
		{"bad device", "services:\n  web:\n    image: app\n    devices: [/dev/a, \"a:b:c:d\"]\n", "services.web.devices[1]", "invalid device"},
		{"bad short volume", "services:\n  web:\n    image: app\n    volumes: [\"/a:/a:ro:x\"]\n", "services.web.volumes[0]", "invalid volume"},
		{"relative device", "services:\n  web:\n    image: app\n    devices: [\"ttyUSB0:/dev/ttyUSB0\"]\n", "services.web.devices[0]", "absolute"},
		{"ulimit soft above hard", "services:\n  web:\n    image: app\n    ulimits: {nofile: {soft: 10, hard: 5}}\n", "services.web.ulimits.nofile", "above hard"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{})
			wantProblem(t, problemsOf(t, err), tt.path, tt.msg)
		})
	}
}

// TestAllProblemsAtOnce: problems found by the same pass are all reported.
func TestAllProblemsAtOnce(t *testing.T) {
	yml := "services:\n  web:\n    build: .\n    container_name: w\n  db:\n    image: db\n    deploy: {}\nsecrets: {}\n"
	_, err := load(t, yml, Options{})
	ps := problemsOf(t, err)
	for _, path := range []string{"services.web.build", "services.web.container_name", "services.db.deploy", "secrets"} {
		wantProblem(t, ps, path, "not supported")
	}
	if len(ps) != 4 {
		t.Errorf("want 4 problems, got:\n%s", dump(ps))
	}
}

func TestVersionIgnored(t *testing.T) {
	rel := mustLoad(t, "version: \"2.4\"\nservices:\n  web:\n    image: app\n", Options{})
	if len(rel.Services) != 1 {
		t.Errorf("services = %v", rel.Services)
	}
}

func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Load(ctx, []byte("services:\n  web:\n    image: app\n"), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestEnvNotModified(t *testing.T) {
	env := map[string]string{"TAG": "1"}
	mustLoad(t, "services:\n  web:\n    image: app:${TAG}\n", Options{Env: env})
	if diff := cmp.Diff(map[string]string{"TAG": "1"}, env); diff != "" {
		t.Errorf("Load changed the caller's env (-want +got):\n%s", diff)
	}
}

func TestCommit(t *testing.T) {
	a := []byte("services:\n  web:\n    image: app\n")
	sum := sha256.Sum256(a)
	if got, want := Commit(a), hex.EncodeToString(sum[:])[:16]; got != want {
		t.Errorf("Commit = %q, want %q", got, want)
	}
	if Commit(a) != Commit(append([]byte(nil), a...)) {
		t.Error("Commit is not stable")
	}
	if Commit(a) == Commit([]byte("services:\n  web:\n    image: app2\n")) {
		t.Error("different files share a commit")
	}
	if got := Commit(nil); len(got) != 16 || strings.Trim(got, "0123456789abcdef") != "" {
		t.Errorf("Commit(nil) = %q, want 16 hex digits", got)
	}
}

func TestNegativeDurations(t *testing.T) {
	tests := []struct{ name, yml, path string }{
		{"stop_grace_period", "services:\n  web:\n    image: app\n    stop_grace_period: -5s\n", "services.web.stop_grace_period"},
		{"healthcheck interval", "services:\n  web:\n    image: app\n    healthcheck: {test: [CMD, x], interval: -1s}\n", "services.web.healthcheck.interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.yml, Options{})
			wantProblem(t, problemsOf(t, err), tt.path, "negative")
		})
	}
}

func TestRelativeWorkingDir(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel := mustLoad(t, "services:\n  web:\n    image: app\n    volumes: [\"./conf:/conf\"]\n", Options{WorkingDir: "proj"})
	want := []reeve.Mount{{Type: reeve.MountBind, Source: wd + "/proj/conf", Target: "/conf"}}
	if diff := cmp.Diff(want, rel.Services["web"].Composition.Volumes); diff != "" {
		t.Errorf("volumes (-want +got):\n%s", diff)
	}
}

// TestInterpolatedDefaults: the value checks of the allowlist read
// interpolated values.
func TestInterpolatedDefaults(t *testing.T) {
	yml := "services:\n  web:\n    image: app\n    depends_on: {db: {condition: service_started, required: \"${REQ:-true}\"}}\n" +
		"  db:\n    image: db\nnetworks:\n  n:\n    external: ${EXT:-false}\n"
	rel := mustLoad(t, yml, Options{})
	if _, ok := rel.Networks["n"]; !ok {
		t.Error("network n missing")
	}
	_, err := load(t, yml, Options{Env: map[string]string{"EXT": "true"}})
	wantProblem(t, problemsOf(t, err), "networks.n.external", "external networks are not supported")
}

func TestInvalidUTF8(t *testing.T) {
	_, err := load(t, "services:\n  web:\n    image: \xff\n", Options{})
	ps := problemsOf(t, err)
	if len(ps) != 1 || !strings.Contains(ps[0].Message, "line 3") {
		t.Errorf("want one problem naming line 3, got:\n%s", dump(ps))
	}
}

func TestPortPathsAfterRanges(t *testing.T) {
	// A validation problem on a port after a range names the entry of the
	// file, not the index among the expanded ports.
	yml := "services:\n  web:\n    image: app\n    ports:\n      - \"8000-8009:8000-8009\"\n      - {target: 80, protocol: sctp}\n      - {target: 81, protocol: carrier-pigeon}\n"
	_, err := load(t, yml, Options{})
	ps := problemsOf(t, err)
	if len(ps) != 1 {
		t.Errorf("want one problem, got:\n%s", dump(ps))
	}
	wantProblem(t, ps, "services.web.ports[2]", "carrier-pigeon")
}

func TestProjectName(t *testing.T) {
	for _, tc := range []struct {
		yml, dir string
		env      map[string]string
		want     string
	}{
		{"name: Shop\nservices: {}\n", "/srv/x", nil, "shop"},
		{"name: ${N}\nservices: {}\n", "/srv/x", map[string]string{"N": "from-env"}, "from-env"},
		{"services: {}\n", "/srv/My App", nil, "myapp"},
		{"services: [\n", "/srv/broken", nil, "broken"},
		{"services: {}\n", "/", nil, "reeve"},
	} {
		if got := ProjectName([]byte(tc.yml), tc.dir, tc.env); got != tc.want {
			t.Errorf("ProjectName(%q, %q) = %q, want %q", tc.yml, tc.dir, got, tc.want)
		}
	}
}

func TestCompletedDependencyDefaultsToNoRestart(t *testing.T) {
	rel, err := Load(context.Background(), []byte(`
services:
  migrate:
    image: x
  web:
    image: x
    depends_on:
      migrate:
        condition: service_completed_successfully
`), Options{ProjectName: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if got := rel.Services["migrate"].Composition.Restart; got != "no" {
		t.Fatalf("migrate restart %q, want no", got)
	}
	if got := rel.Services["web"].Composition.RestartPolicy(); got != "always" {
		t.Fatalf("web restart %q, want the default always", got)
	}
	_, err = Load(context.Background(), []byte(`
services:
  migrate:
    image: x
    restart: always
  web:
    image: x
    depends_on:
      migrate:
        condition: service_completed_successfully
`), Options{ProjectName: "p"})
	if err == nil || !strings.Contains(err.Error(), "never would") {
		t.Fatalf("want a refusal of restart: always on a job, got %v", err)
	}
}
