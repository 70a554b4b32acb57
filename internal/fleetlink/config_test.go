package fleetlink

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"reeve.dev/reeve"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadConfigRefusesWhatCannotWork(t *testing.T) {
	for _, tc := range []struct {
		name, json, want string
	}{
		{"no endpoint", `{"provisioningKey":"k"}`, "apiEndpoint is missing"},
		{"no key", `{"apiEndpoint":"https://fleet.example.com"}`, "neither a provisioningKey nor a deviceApiKey"},
		{"bad uuid", `{"apiEndpoint":"https://fleet.example.com","provisioningKey":"k","uuid":"ABC"}`, "uuid \"ABC\" is not valid"},
		{"bad scheme", `{"apiEndpoint":"ftp://fleet.example.com","provisioningKey":"k"}`, "http:// or https://"},
		{"not a string", `{"apiEndpoint":"https://fleet.example.com","provisioningKey":42}`, "provisioningKey must be a string"},
		{"not json", `apiEndpoint: x`, "not a JSON object"},
		{"short device key", `{"apiEndpoint":"https://f.example.com","provisioningKey":"k","deviceApiKey":"short"}`, "shorter than 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.json")
			writeFile(t, path, tc.json)
			_, err := LoadConfig(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("err = %v, want it to name the file", err)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("a missing file loaded")
	}
}

func TestEnsureIdentityMakesAndSavesIdentity(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	writeFile(t, path, `{"apiEndpoint":"fleet.example.com:48400","provisioningKey":"pk","deviceType":"raspberrypi4-64",
		"hostname":"pi-kitchen","persistentLogging":true,"os":{"network":{"wifi":["a","b"]}}}`)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := c.EnsureIdentity()
	if err != nil || !changed {
		t.Fatalf("EnsureIdentity = %v, %v; want a new identity", changed, err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(c.UUID) || !reeve.ValidUUID(c.UUID) {
		t.Errorf("uuid = %q, want 32 lowercase hex digits", c.UUID)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(c.DeviceAPIKey) {
		t.Errorf("deviceApiKey = %q, want 32 random bytes in hex", c.DeviceAPIKey)
	}

	// On disk, with the hand-added keys as they were.
	got := readJSONFile(t, path)
	if got["uuid"] != c.UUID || got["deviceApiKey"] != c.DeviceAPIKey || got["provisioningKey"] != "pk" ||
		got["deviceType"] != "raspberrypi4-64" || got["apiEndpoint"] != "fleet.example.com:48400" {
		t.Errorf("saved config = %v, want the identity and the known keys", got)
	}
	if got["hostname"] != "pi-kitchen" || got["persistentLogging"] != true {
		t.Errorf("saved config = %v, lost hand-added keys", got)
	}
	if wifi := got["os"].(map[string]any)["network"].(map[string]any)["wifi"].([]any); len(wifi) != 2 {
		t.Errorf("nested unknown key = %v, want it kept", got["os"])
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600 (it holds keys)", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only config.json (no temporary file left)", len(entries))
	}

	// A second start keeps the identity.
	again, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	changed, err = again.EnsureIdentity()
	if err != nil || changed {
		t.Fatalf("EnsureIdentity on a saved identity = %v, %v; want nothing to do", changed, err)
	}
	if again.UUID != c.UUID || again.DeviceAPIKey != c.DeviceAPIKey {
		t.Error("the identity changed on reload")
	}
}

func TestSaveDropsEmptyKnownKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, path, `{"apiEndpoint":"https://f.example.com","provisioningKey":"pk","custom":"x"}`)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.EnsureIdentity(); err != nil {
		t.Fatal(err)
	}
	c.ProvisioningKey = ""
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	got := readJSONFile(t, path)
	if _, ok := got["provisioningKey"]; ok {
		t.Errorf("saved config = %v, still holds the provisioning key", got)
	}
	if got["custom"] != "x" {
		t.Errorf("saved config = %v, lost the unknown key", got)
	}
	if _, err := LoadConfig(path); err != nil {
		t.Errorf("the saved config does not load: %v", err)
	}
}
