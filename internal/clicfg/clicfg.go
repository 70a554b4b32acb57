// Package clicfg is where the operator CLI keeps its login: which fleet
// server, with which token. `reeve login` writes it, `reeve dev` writes it
// for its own server, every operator command reads it.
package clicfg

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"reeve.dev/reeve/internal/atomicfile"
)

// Config is the saved login.
type Config struct {
	Server string `json:"server"`
	Token  string `json:"token"`
}

// Path is where the login is kept: reeve/cli.json under the user's
// configuration directory ($XDG_CONFIG_HOME, else ~/.config).
func Path() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find where to keep the login: %w", err)
	}
	return filepath.Join(dir, "reeve", "cli.json"), nil
}

// Load reads the saved login; none is a zero Config.
func Load() (Config, error) {
	var cfg Config
	path, err := Path()
	if err != nil {
		return cfg, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read the login: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("read the login in %s (log in again to replace it): %w", path, err)
	}
	return cfg, nil
}

// Save writes the login, readable by its owner only, and returns the
// file's path.
func Save(cfg Config) (string, error) {
	path, err := Path()
	if err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("save the login: %w", err)
	}
	return path, nil
}

// NormalizeServer writes a server address the way the client does, so
// addresses can be compared: a scheme, no trailing slash.
func NormalizeServer(s string) string {
	s = strings.TrimSpace(s)
	if s != "" && !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return strings.TrimRight(s, "/")
}
