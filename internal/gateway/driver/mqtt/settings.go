package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"
)

// DefaultPrefix is the first level of every topic when the "prefix"
// setting is not given.
const DefaultPrefix = "reeve"

// config is the driver's settings, checked.
type config struct {
	broker         *url.URL
	addr           string      // host:port to dial
	tls            *tls.Config // nil for plain TCP
	prefix         string
	clientID       string // "" for reeve-gateway-<app uuid>
	username       string
	password       string
	chunkSize      int
	ackTimeout     time.Duration
	retries        int
	installTimeout time.Duration
	keepAlive      time.Duration
	connectTimeout time.Duration
	logBuffer      int
}

// defaultSetting is a setting's value when it is not given;
// docs/mqtt.md says what each one does.
func defaultSetting(key string) string {
	switch key {
	case "broker":
		return "tcp://127.0.0.1:1883"
	case "prefix":
		return DefaultPrefix
	case "chunk_size":
		return "1024"
	case "ack_timeout":
		return "10s"
	case "retries":
		return "5"
	case "install_timeout":
		return "5m"
	case "keepalive":
		return "30s"
	case "connect_timeout":
		return "30s"
	case "log_buffer":
		return "1000"
	}
	return "" // client_id, username, password, ca_file
}

func parseSettings(settings map[string]string) (config, error) {
	get := func(k string) string {
		if v, ok := settings[k]; ok && v != "" {
			return v
		}
		return defaultSetting(k)
	}
	var c config
	u, err := url.Parse(get("broker"))
	if err != nil {
		return c, fmt.Errorf("broker: %w", err)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") {
		return c, fmt.Errorf("broker %q: want scheme://host:port", get("broker"))
	}
	var port string
	switch u.Scheme {
	case "tcp", "mqtt":
		port = "1883"
	case "tls", "ssl", "mqtts":
		port = "8883"
		c.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
		if f := get("ca_file"); f != "" {
			pem, err := os.ReadFile(f)
			if err != nil {
				return c, fmt.Errorf("ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return c, fmt.Errorf("ca_file %s: no PEM certificates", f)
			}
			c.tls.RootCAs = pool
		}
	default:
		return c, fmt.Errorf("broker %q: scheme %q, want tcp, mqtt, tls, ssl or mqtts", get("broker"), u.Scheme)
	}
	if u.Port() != "" {
		port = u.Port()
	}
	c.broker, c.addr = u, net.JoinHostPort(u.Hostname(), port)

	c.prefix = get("prefix")
	if !validPrefix(c.prefix) {
		return c, fmt.Errorf("prefix %q: want topic levels without + # or a leading $", c.prefix)
	}
	c.clientID, c.username, c.password = get("client_id"), get("username"), get("password")

	ints := []struct {
		key string
		dst *int
		min int
	}{{"chunk_size", &c.chunkSize, 16}, {"retries", &c.retries, 0}, {"log_buffer", &c.logBuffer, 1}}
	for _, i := range ints {
		n, err := strconv.Atoi(get(i.key))
		if err != nil || n < i.min {
			return c, fmt.Errorf("%s %q: want a number ≥ %d", i.key, get(i.key), i.min)
		}
		*i.dst = n
	}
	if c.chunkSize > 256<<20 {
		return c, fmt.Errorf("chunk_size %d: more than an MQTT message carries", c.chunkSize)
	}
	durs := []struct {
		key string
		dst *time.Duration
	}{{"ack_timeout", &c.ackTimeout}, {"install_timeout", &c.installTimeout}, {"keepalive", &c.keepAlive}, {"connect_timeout", &c.connectTimeout}}
	for _, d := range durs {
		v, err := time.ParseDuration(get(d.key))
		if err != nil || v <= 0 {
			return c, fmt.Errorf("%s %q: want a positive duration such as 10s", d.key, get(d.key))
		}
		*d.dst = v
	}
	if c.keepAlive > 65535*time.Second {
		return c, fmt.Errorf("keepalive %s: at most 65535s", c.keepAlive)
	}
	return c, nil
}
