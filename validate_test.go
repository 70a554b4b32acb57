package reeve

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const validTarget = `{"dev1": {"name": "pi", "config": {"REEVE_X": "1"}, "apps": {"a1": {"id": 1, "name": "app", "class": "fleet",
 "releases": {"c1": {"id": 7,
  "services": {
   "db": {"id": 1, "image_id": 1, "image": "registry.example.com/db:1", "composition": {"volumes": [{"type": "volume", "source": "data", "target": "/data"}], "networks": {"back": {}}}},
   "web": {"id": 2, "image_id": 2, "image": "registry.example.com/web@sha256:0123456789012345678901234567890123456789012345678901234567890123",
     "running": false, "environment": {"A": "1"}, "labels": {"io.reeve.update.strategy": "hand-over"},
     "composition": {"depends_on": {"db": {"condition": "service_healthy"}}, "stop_grace_period": "30s", "networks": {"back": {"aliases": ["w"]}}}}},
  "volumes": {"data": {}},
  "networks": {"back": {"ipam": {"config": [{"subnet": "172.28.0.0/16"}]}}}}}}}}}`

func TestParseTargetStateValid(t *testing.T) {
	ts, err := ParseTargetState([]byte(validTarget))
	if err != nil {
		t.Fatal(err)
	}
	rel := ts["dev1"].Apps["a1"].Releases["c1"]
	if rel.Services["db"].Running != true {
		t.Error("running defaults to true")
	}
	if rel.Services["web"].Running != false {
		t.Error("running false is kept")
	}
	if got := rel.Services["web"].Composition.StopGracePeriod.D().String(); got != "30s" {
		t.Errorf("stop_grace_period %s", got)
	}
	if rel.Services["web"].Strategy() != StrategyHandOver {
		t.Error("strategy label not read")
	}
	// A round trip through JSON gives the same state.
	b, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseTargetState(b)
	if err != nil {
		t.Fatalf("re-parse: %v", err)
	}
	if again["dev1"].Apps["a1"].Releases["c1"].Services["web"].ConfigHash() != rel.Services["web"].ConfigHash() {
		t.Error("config hash changed across a JSON round trip")
	}
}

func TestParseTargetStateNamesEveryProblem(t *testing.T) {
	for _, tc := range []struct {
		name, from, to string
		want           []string
	}{
		{"bad image", `"registry.example.com/db:1"`, `"Not An/Image"`,
			[]string{`apps.a1.releases.c1.services.db.image: invalid reference "Not An/Image"`}},
		{"unknown service key", `"image_id": 1,`, `"image_id": 1, "colour": "red",`,
			[]string{`apps.a1.releases.c1.services.db: unknown field "colour"`}},
		{"unknown composition key", `"stop_grace_period": "30s"`, `"stop_grace_period": "30s", "pid": "host"`,
			[]string{`apps.a1.releases.c1.services.web.composition: unknown field "pid"`}},
		{"bad duration", `"30s"`, `"30 seconds"`,
			[]string{`services.web.composition`, `invalid duration "30 seconds"`}},
		{"missing dependency", `"depends_on": {"db"`, `"depends_on": {"cache"`,
			[]string{`apps.a1.releases.c1.services.web.composition.depends_on.cache: depends on service "cache", which is not in the release`}},
		{"undeclared volume", `"source": "data"`, `"source": "logs"`,
			[]string{`apps.a1.releases.c1.services.db.composition.volumes[0]: volume "logs" is not defined`}},
		{"undeclared network", `"networks": {"back": {}}}`, `"networks": {"front": {}}}`,
			[]string{`services.db.composition.networks.front: network "front" is not defined`}},
		{"bad strategy", `"hand-over"`, `"yolo"`,
			[]string{`services.web.labels.io.reeve.update.strategy: unknown update strategy "yolo"`}},
		{"reserved label", `"labels": {`, `"labels": {"io.reeve.app-uuid": "x", `,
			[]string{`services.web.labels.io.reeve.app-uuid: labels under io.reeve. are set by reeve itself`}},
		{"bad subnet", `"172.28.0.0/16"`, `"172.28.0.0"`,
			[]string{`networks.back.ipam.config[0].subnet: invalid subnet`}},
		{"bad app uuid", `"a1": {`, `"A 1": {`, []string{`apps.A 1: invalid app UUID`}},
		{"bad commit", `"c1": {`, `"c_1": {`, []string{`releases.c_1: invalid commit "c_1"`}},
		{"bad class", `"fleet"`, `"block"`, []string{`apps.a1.class: unsupported app class "block"`}},
		{"wrong type", `"id": 7`, `"id": "seven"`, []string{`apps.a1.releases.c1: id: expected int64, got a JSON string`}},
		{"two problems", `"registry.example.com/db:1"`, `""`,
			[]string{`services.db.image: required`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(validTarget, tc.from) {
				t.Fatalf("test bug: %q not in the valid target", tc.from)
			}
			_, err := ParseTargetState([]byte(strings.Replace(validTarget, tc.from, tc.to, 1)))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a *ValidationError, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if ErrorCode(err) != CodeInvalid {
				t.Errorf("code %s", ErrorCode(err))
			}
		})
	}
}

func TestDependencyCycleRefused(t *testing.T) {
	svc := func(deps ...string) Service {
		s := Service{Image: "x", Composition: Composition{DependsOn: map[string]Dependency{}}}
		for _, d := range deps {
			s.Composition.DependsOn[d] = Dependency{}
		}
		return s
	}
	d := DeviceTarget{Apps: map[string]App{"a": {Releases: map[string]Release{"c": {Services: map[string]Service{
		"a": svc("b"), "b": svc("c"), "c": svc("a"), "d": svc(),
	}}}}}}
	err := d.Validate()
	if err == nil || !strings.Contains(err.Error(), "depends_on forms a cycle: a -> b -> c -> a") {
		t.Fatalf("got %v", err)
	}
}

func TestNormalizeImage(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":                         "docker.io/library/nginx:latest",
		"nginx:1.25":                    "docker.io/library/nginx:1.25",
		"127.0.0.1:5000/app/web:v1":     "127.0.0.1:5000/app/web:v1",
		"ghcr.io/x/y@sha256:" + hex64:   "ghcr.io/x/y@sha256:" + hex64,
		"ghcr.io/x/y:1@sha256:" + hex64: "ghcr.io/x/y@sha256:" + hex64,
	} {
		got, err := NormalizeImage(in)
		if err != nil || got != want {
			t.Errorf("NormalizeImage(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "library/UPPER", "a b", "x@sha256:short"} {
		if _, err := NormalizeImage(bad); err == nil {
			t.Errorf("NormalizeImage(%q) accepted", bad)
		}
	}
}

const hex64 = "0123456789012345678901234567890123456789012345678901234567890123"

func TestConfigHash(t *testing.T) {
	a := Service{Image: "nginx", Environment: map[string]string{}, Composition: Composition{Command: []string{"x"}}}
	b := Service{ID: 9, Image: "docker.io/library/nginx:latest", Running: true, Composition: Composition{Command: []string{"x"}}}
	if a.ConfigHash() != b.ConfigHash() {
		t.Error("hash depends on image spelling, ids, running or empty maps")
	}
	b.Environment = map[string]string{"A": "1"}
	if a.ConfigHash() == b.ConfigHash() {
		t.Error("hash ignores the environment")
	}
	if (Volume{}).ConfigHash() != (Volume{Labels: map[string]string{}}).ConfigHash() {
		t.Error("volume hash depends on empty vs nil labels")
	}
}

func FuzzParseTargetState(f *testing.F) {
	f.Add([]byte(validTarget))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"d": {"apps": {"a": {"releases": {"c": {"services": {"s": {"image": "x", "composition": {"ports": [{"target": 1}]}}}}}}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := ParseTargetState(data)
		if err != nil {
			return
		}
		// What is accepted must survive a round trip and stay valid.
		b, err := json.Marshal(ts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseTargetState(b); err != nil {
			t.Fatalf("accepted state does not re-parse: %v", err)
		}
	})
}

func TestCompletedDependencyMustNotRestartAlways(t *testing.T) {
	mk := func(restart string) DeviceTarget {
		return DeviceTarget{Apps: map[string]App{"a": {Releases: map[string]Release{"c": {Services: map[string]Service{
			"migrate": {Image: "x", Composition: Composition{Restart: restart}},
			"web":     {Image: "x", Composition: Composition{DependsOn: map[string]Dependency{"migrate": {Condition: ConditionCompleted}}}},
		}}}}}}
	}
	for restart, ok := range map[string]bool{"": false, "always": false, "unless-stopped": false, "no": true, "on-failure:3": true} {
		err := mk(restart).Validate()
		if ok != (err == nil) {
			t.Errorf("restart %q: %v", restart, err)
		}
		if err != nil && !strings.Contains(err.Error(), `depends_on.migrate: waits for service "migrate" to complete`) {
			t.Errorf("restart %q: %v", restart, err)
		}
	}
}
