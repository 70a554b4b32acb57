package agentd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"reeve.dev/reeve/internal/runtime"
)

func TestLoadRegistryAuth(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "config.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := loadRegistryAuth(write(`{"auths": {
		"https://registry.example.com/": {"auth": "dXNlcjpwYTpzcw=="},
		"127.0.0.1:5000": {"username": "bob", "password": "secret"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]runtime.Auth{
		"registry.example.com": {Username: "user", Password: "pa:ss"},
		"127.0.0.1:5000":       {Username: "bob", Password: "secret"},
	}
	for host, a := range want {
		if got[host] != a {
			t.Errorf("%s: got %+v, want %+v", host, got[host], a)
		}
	}
	for body, msg := range map[string]string{
		`{"auths": {"r": {"auth": "%%%"}}}`:          "not base64",
		`{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}`: "not base64 of user:password",
		`[1, 2]`: "docker config.json",
	} {
		if _, err := loadRegistryAuth(write(body)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want one saying %q", body, err, msg)
		}
	}
	if m, err := loadRegistryAuth(""); err != nil || m != nil {
		t.Errorf("no file: %v %v", m, err)
	}
}
