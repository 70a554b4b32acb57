package reeve

// Version is reeve's version, set at build time with
// -ldflags "-X reeve.dev/reeve.Version=v1.2.3".
var Version = "dev"
