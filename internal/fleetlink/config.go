// Package fleetlink is the agent's link to its fleet server: provisioning,
// polling, reporting.
//
// A device's identity and credentials live in its config.json (see Config).
// A Link registers the device with the fleet's provisioning key when it has
// one, then polls the device's target state (with ETags, and long polls when
// the server offers them), hands it to the agent, and reports the device's
// current state back, sending only what changed.
package fleetlink

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"reeve.dev/reeve/internal/atomicfile"

	"reeve.dev/reeve"
)

// Config is a device's config.json: where its fleet server is and who the
// device is. Keys it does not know are kept when it is saved, so keys added
// by hand or by other tools survive.
type Config struct {
	// APIEndpoint is the fleet server's URL (or host:port).
	APIEndpoint string
	// ProvisioningKey is the fleet's provisioning key; it is dropped once
	// the device is registered.
	ProvisioningKey string
	// UUID is the device's identity: 32 lowercase hex digits.
	UUID string
	// DeviceAPIKey is the device's own key, made by the device.
	DeviceAPIKey string
	DeviceType   string
	DeviceName   string

	// Path is the file Save writes; LoadConfig sets it.
	Path string

	extra map[string]json.RawMessage // unknown keys, kept as they were
}

// The JSON keys of config.json.
const (
	keyAPIEndpoint     = "apiEndpoint"
	keyProvisioningKey = "provisioningKey"
	keyUUID            = "uuid"
	keyDeviceAPIKey    = "deviceApiKey"
	keyDeviceType      = "deviceType"
	keyDeviceName      = "deviceName"
)

// minKeyLength is the shortest device key the server accepts.
const minKeyLength = 32

func (c *Config) fields() []struct {
	key string
	val *string
} {
	return []struct {
		key string
		val *string
	}{
		{keyAPIEndpoint, &c.APIEndpoint},
		{keyProvisioningKey, &c.ProvisioningKey},
		{keyUUID, &c.UUID},
		{keyDeviceAPIKey, &c.DeviceAPIKey},
		{keyDeviceType, &c.DeviceType},
		{keyDeviceName, &c.DeviceName},
	}
}

// UnmarshalJSON reads config.json, keeping unknown keys.
func (c *Config) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	*c = Config{Path: c.Path}
	for _, f := range c.fields() {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		delete(raw, f.key)
		if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			continue
		}
		if err := json.Unmarshal(v, f.val); err != nil {
			return fmt.Errorf("%s must be a string", f.key)
		}
		*f.val = strings.TrimSpace(*f.val)
	}
	if len(raw) > 0 {
		c.extra = raw
	}
	return nil
}

// MarshalJSON writes config.json: the known keys that are set and every
// unknown key as it was read.
func (c Config) MarshalJSON() ([]byte, error) {
	out := make(map[string]json.RawMessage, len(c.extra)+6)
	for k, v := range c.extra {
		out[k] = v
	}
	for _, f := range c.fields() {
		if *f.val == "" {
			delete(out, f.key)
			continue
		}
		b, err := json.Marshal(*f.val)
		if err != nil {
			return nil, err
		}
		out[f.key] = b
	}
	return json.MarshalIndent(out, "", "  ")
}

// LoadConfig reads and checks config.json. A missing uuid or deviceApiKey is
// not an error: EnsureIdentity makes them.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no device config at %s: make one with `reeve key create --fleet F -o config.json` and pass --config, or run with --local to do without a fleet server", path)
	}
	if err != nil {
		return nil, fmt.Errorf("read fleet config: %w", err)
	}
	c := &Config{Path: path}
	if err := c.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("fleet config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate says what is wrong with the configuration, and how to fix it.
func (c *Config) Validate() error {
	where := "fleet config"
	if c.Path != "" {
		where += " " + c.Path
	}
	if c.APIEndpoint == "" {
		return fmt.Errorf("%s: apiEndpoint is missing: set it to the fleet server's URL, such as \"https://fleet.example.com\"", where)
	}
	if err := checkEndpoint(c.APIEndpoint); err != nil {
		return fmt.Errorf("%s: apiEndpoint %q %w", where, c.APIEndpoint, err)
	}
	if c.ProvisioningKey == "" && c.DeviceAPIKey == "" {
		return fmt.Errorf("%s: the device has neither a provisioningKey nor a deviceApiKey: add the fleet's provisioning key as provisioningKey (`reeve key create --fleet F`) so that it can register", where)
	}
	if c.UUID != "" && !reeve.ValidUUID(c.UUID) {
		return fmt.Errorf("%s: uuid %q is not valid: use 32 lowercase hex digits, or remove it to have one made", where, c.UUID)
	}
	if c.ProvisioningKey != "" && c.DeviceAPIKey != "" && len(c.DeviceAPIKey) < minKeyLength {
		return fmt.Errorf("%s: deviceApiKey is shorter than %d characters, which the server refuses: remove it to have one made", where, minKeyLength)
	}
	return nil
}

func checkEndpoint(s string) error {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("is not a URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("must be an http:// or https:// URL")
	case u.Host == "":
		return errors.New("has no host")
	}
	return nil
}

// EnsureIdentity gives the device a UUID and a device key when config.json
// has none, and saves the file when it made either, so that the identity is
// on disk before the device registers with it. changed says whether it made
// anything.
func (c *Config) EnsureIdentity() (changed bool, err error) {
	if c.UUID == "" {
		if c.UUID, err = randomHex(16); err != nil {
			return false, err
		}
		changed = true
	}
	if c.DeviceAPIKey == "" {
		if c.DeviceAPIKey, err = randomHex(32); err != nil {
			return changed, err
		}
		changed = true
	}
	if err := c.Validate(); err != nil {
		return changed, err
	}
	if changed {
		if err := c.Save(); err != nil {
			return changed, fmt.Errorf("save the new device identity: %w", err)
		}
	}
	return changed, nil
}

// Save writes the configuration to Path atomically (a power cut leaves the
// old file or the new one, never a mix), readable by its owner only.
func (c *Config) Save() error {
	if c.Path == "" {
		return errors.New("save fleet config: the configuration has no file path")
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("save fleet config: %w", err)
	}
	if err := atomicfile.Write(c.Path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save fleet config: %w", err)
	}
	return nil
}

// clone returns a copy that shares nothing mutable with c.
func (c *Config) clone() *Config {
	cc := *c
	if c.extra != nil {
		cc.extra = make(map[string]json.RawMessage, len(c.extra))
		for k, v := range c.extra {
			cc.extra[k] = v
		}
	}
	return &cc
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make random identity: %w", err)
	}
	return hex.EncodeToString(b), nil
}
