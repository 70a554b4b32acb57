package compose

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"reeve.dev/reeve"
)

// FuzzLoad: Load never panics (a recovered panic would surface as the
// "cannot read the compose file" problem), fails only with validation
// errors, and what it returns passes reeve's validation.
func FuzzLoad(f *testing.F) {
	if full, err := os.ReadFile("testdata/full.yml"); err == nil {
		f.Add(full)
	}
	for _, s := range []string{
		"services:\n  web:\n    image: nginx\n",
		"services:\n  web:\n    image: app:${TAG:-1}\n    ports: [\"8000-8002:8000-8002\", {target: 80}]\n    volumes: [\"./a:/a:ro\", data:/d]\nvolumes: {data: }\n",
		"services:\n  web:\n    build: .\n    container_name: x\n",
		"x-a: &a {image: x}\nservices:\n  s:\n    <<: *a\n    depends_on: {t: {condition: service_healthy}}\n  t: {image: y, network_mode: host}\n",
		"services:\n  web:\n    image: [\n",
		"services:\n  web:\n    image: app\n    healthcheck: {test: pg_isready, retries: 3}\n    ulimits: {nofile: 5}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rel, err := Load(context.Background(), data, Options{
			WorkingDir: "/srv/app",
			Env:        map[string]string{"TAG": "2", "A": "1"},
		})
		if err != nil {
			var ve *reeve.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error is %T, not a validation error: %v", err, err)
			}
			for _, p := range ve.Problems {
				if strings.HasPrefix(p.Message, "cannot read the compose file") {
					t.Fatalf("panic while loading %q: %s", data, p.Message)
				}
			}
			return
		}
		if len(rel.Services) == 0 {
			t.Fatal("loaded a release without services")
		}
		for name, svc := range rel.Services {
			if !svc.Running || svc.ID != 0 || svc.ImageID != 0 {
				t.Fatalf("service %s: running=%v id=%d image_id=%d", name, svc.Running, svc.ID, svc.ImageID)
			}
		}
		dev := reeve.DeviceTarget{Apps: map[string]reeve.App{"compose": {Releases: map[string]reeve.Release{"compose": rel}}}}
		if err := dev.Validate(); err != nil {
			t.Fatalf("loaded release does not validate: %v", err)
		}
	})
}
