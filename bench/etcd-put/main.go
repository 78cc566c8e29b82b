// etcd-put — the etcd reference of bench:raft and bench:meta driven by etcd's own client stack (Go,
// grpc-go, etcd's generated KV client), so that a ratio against etcd does not depend on DogFS's Node
// gRPC client. Closed-loop workers put VALUE-byte values for SECONDS after a warm-up, spread over the
// endpoints as bench/lib.ts's own loop does, and print one JSON object with the same fields as
// bench/lib.ts's LoadResult. Built by bench/lib.ts from Debian's golang-go and golang-etcd-server-dev
// (GOPATH mode, no module downloads) where they are installed; never committed as a binary.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/etcdserver/etcdserverpb"
	"google.golang.org/grpc"
)

type result struct {
	Ops       int     `json:"ops"`
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"opsPerSec"`
	P50Ms     float64 `json:"p50Ms"`
	P99Ms     float64 `json:"p99Ms"`
	MaxMs     float64 `json:"maxMs"`
	// Every put of the run (warm-up included) and this process's CPU over it, for CPU per put.
	AllPuts    int64   `json:"allPuts"`
	CpuSeconds float64 `json:"cpuSeconds"`
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func main() {
	endpoints := flag.String("endpoints", "", "host:port of each member, comma-separated")
	concurrency := flag.Int("concurrency", 64, "closed-loop workers")
	seconds := flag.Float64("seconds", 5, "measured seconds (after a warm-up of a fifth of it, at most 1 s)")
	valueBytes := flag.Int("value-bytes", 256, "bytes per value")
	flag.Parse()
	addrs := strings.Split(*endpoints, ",")
	clients := make([]etcdserverpb.KVClient, 0, len(addrs))
	for _, addr := range addrs {
		conn, err := grpc.Dial(addr, grpc.WithInsecure())
		if err != nil {
			fmt.Fprintln(os.Stderr, "etcd-put:", err)
			os.Exit(1)
		}
		defer conn.Close()
		clients = append(clients, etcdserverpb.NewKVClient(conn))
	}
	value := []byte(strings.Repeat("x", *valueBytes))
	var measuring, stop atomic.Bool
	var errors, allPuts int64
	latencies := make([][]float64, *concurrency)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			client := clients[w%len(clients)]
			for i := 0; !stop.Load(); i++ {
				started := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.Put(ctx, &etcdserverpb.PutRequest{Key: []byte(fmt.Sprintf("k%d-%d", w, i%64)), Value: value})
				cancel()
				if err == nil {
					atomic.AddInt64(&allPuts, 1)
				}
				if !measuring.Load() {
					continue
				}
				if err != nil {
					atomic.AddInt64(&errors, 1)
					continue
				}
				latencies[w] = append(latencies[w], float64(time.Since(started).Microseconds())/1000)
			}
		}(w)
	}
	warmup := *seconds / 5
	if warmup > 1 {
		warmup = 1
	}
	time.Sleep(time.Duration(warmup * float64(time.Second)))
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	measuring.Store(false)
	elapsed := time.Since(t0).Seconds()
	stop.Store(true)
	wg.Wait()
	all := []float64{}
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Float64s(all)
	r := result{Ops: len(all), Errors: errors, Seconds: elapsed, OpsPerSec: float64(len(all)) / elapsed,
		P50Ms: percentile(all, 50), P99Ms: percentile(all, 99)}
	if len(all) > 0 {
		r.MaxMs = all[len(all)-1]
	}
	r.AllPuts = allPuts
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) == nil {
		r.CpuSeconds = float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
