package bench

import "errors"

var errNoCompose = errors.New("no compose command: neither `docker compose version` nor `docker-compose version` works; install docker-compose or pass the command")
