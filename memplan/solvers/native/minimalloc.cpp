// memplan's compiled exact allocator: MiniMalloc's search, written afresh in C++17.
//
// The algorithm is the one of Moffitt, "MiniMalloc: A Lightweight Memory Allocator for
// Hardware-Accelerated Machine Learning" (ASPLOS 2023; reference implementation google/minimalloc,
// Apache-2.0). Given buffers (half-open lifetime [lower, upper), size) and a capacity, it decides
// whether every buffer can get an offset (a multiple of the alignment) such that buffers live at
// the same time do not share bytes and every buffer ends within the capacity:
//
//  - a *sweep* over lifetimes cuts time into sections (one per distinct end time: the buffers live
//    just before it), lists every buffer's section range and its conflicts, and splits the
//    buffers into independent partitions (no buffer crosses between two partitions);
//  - a depth-first search over *canonical* packings only: every buffer is placed at its minimum
//    offset (the aligned top of the highest conflicting buffer placed so far), buffers are placed
//    in non-decreasing (offset, preorder index) order, so each packing is reached along one path;
//  - dynamic ordering: the candidates of a node are tried by smallest offset, then static preorder;
//  - dominance: a buffer whose offset is at or above the lowest top any unplaced buffer reaches
//    would leave a gap that buffer fits in: skipped;
//  - section inference: in every section, the bytes still unplaced must fit between the section's
//    floor and the capacity; the floor is the top of what is placed there, the offset being placed
//    (monotonic floor: later offsets never go lower), and the lowest minimum offset of the
//    unplaced buffers of the section (unallocated floor);
//  - hatless pruning: once a buffer with no unplaced conflict has failed at its offset, no other
//    candidate of that node is tried (swapping them gives the same sub-problem);
//  - dynamic temporal decomposition: once no unplaced buffer crosses between two sections, the two
//    sides are solved independently;
//  - static preorders WAT / TAW / TWA (W = lifetime width, A = area, T = the largest section total
//    the buffer is in, all descending), tried round robin with a node limit doubling each round.
//
// Differences from the reference, for speed: flat arrays and undo stacks instead of hash sets and
// per-node vectors; a node keeps only its candidates (buffers below the dominance line), not the
// whole ordering; partitions solved in one round are not solved again in the next.
//
// The interface is a plain C ABI (see memplan_mm_solve below), called from Python through ctypes.

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using i64 = int64_t;
constexpr i64 kInf = INT64_MAX;

enum Status : int { kFound = 0, kInfeasible = 1, kTimeout = 2, kNodeLimit = 3, kAborted = 4 };

enum Disable : uint32_t {
  kNoCanonical = 1u << 0,
  kNoSectionInference = 1u << 1,
  kNoDynamicOrdering = 1u << 2,
  kNoDominance = 1u << 3,
  kNoUnallocatedFloor = 1u << 4,
  kNoStaticPreorder = 1u << 5,
  kNoDecomposition = 1u << 6,
  kNoMonotonicFloor = 1u << 7,
  kNoHatless = 1u << 8,
};

struct Part {
  std::vector<int> bufs;
  int lo = 0, hi = 0;  // section range [lo, hi)
};

// Sections, conflicts and partitions of the non-empty buffers.
struct Sweep {
  int sections = 0;
  std::vector<int> s0, s1;              // section range of each buffer
  std::vector<int> sec_ptr, sec_bufs;   // buffers of each section (CSR)
  std::vector<int> adj_ptr, adj;        // conflicts of each buffer (CSR)
  std::vector<Part> parts;
  std::vector<i64> sec_total;           // bytes of each section
};

struct Event {
  i64 time;
  int kind;  // 0 = end (ends sort before starts at equal times: lifetimes are half-open)
  int buf;
  bool operator<(const Event& o) const {
    if (time != o.time) return time < o.time;
    if (kind != o.kind) return kind < o.kind;
    return buf < o.buf;
  }
};

Sweep sweep(int n, const i64* lower, const i64* upper, const i64* size) {
  Sweep w;
  w.s0.assign(n, 0);
  w.s1.assign(n, 0);
  std::vector<Event> ev;
  ev.reserve(2 * n);
  for (int b = 0; b < n; ++b) {
    ev.push_back({lower[b], 1, b});
    ev.push_back({upper[b], 0, b});
  }
  std::sort(ev.begin(), ev.end());
  std::vector<int> active, pos(n, -1);
  std::vector<std::vector<int>> adj(n);
  std::vector<std::vector<int>> secs;
  bool have_section = false;
  i64 last_section_time = 0;
  for (const Event& e : ev) {
    const int b = e.buf;
    if (e.kind == 0) {
      if (!have_section || last_section_time < e.time) {
        have_section = true;
        last_section_time = e.time;
        secs.push_back(active);
      }
      const int p = pos[b];
      active[p] = active.back();
      pos[active[p]] = p;
      active.pop_back();
      w.s1[b] = (int)secs.size();
      if (active.empty()) w.parts.back().hi = (int)secs.size();
    } else {
      if (active.empty()) {
        w.parts.emplace_back();
        w.parts.back().lo = (int)secs.size();
      }
      w.parts.back().bufs.push_back(b);
      for (int a : active) {
        adj[a].push_back(b);
        adj[b].push_back(a);
      }
      pos[b] = (int)active.size();
      active.push_back(b);
      w.s0[b] = (int)secs.size();
    }
  }
  w.sections = (int)secs.size();
  w.sec_ptr.assign(w.sections + 1, 0);
  w.sec_total.assign(w.sections, 0);
  for (int s = 0; s < w.sections; ++s) {
    w.sec_ptr[s + 1] = w.sec_ptr[s] + (int)secs[s].size();
    for (int b : secs[s]) w.sec_total[s] += size[b];
  }
  w.sec_bufs.reserve(w.sec_ptr.back());
  for (auto& s : secs) w.sec_bufs.insert(w.sec_bufs.end(), s.begin(), s.end());
  w.adj_ptr.assign(n + 1, 0);
  for (int b = 0; b < n; ++b) w.adj_ptr[b + 1] = w.adj_ptr[b] + (int)adj[b].size();
  w.adj.reserve(w.adj_ptr.back());
  for (auto& a : adj) {
    std::sort(a.begin(), a.end());
    w.adj.insert(w.adj.end(), a.begin(), a.end());
  }
  return w;
}

struct Pre {
  __int128 area;
  i64 width, total, size, lower, upper, sections, overlaps;
  int buf;
};

struct Entry {
  i64 off;
  int pidx;
  int buf;
};

class Search {
 public:
  Search(int n, const i64* lower, const i64* upper, const i64* size, i64 alignment, i64 capacity,
         const Sweep& w, uint32_t disable, double time_limit, i64 max_nodes)
      : n_(n), lower_(lower), upper_(upper), size_(size), align_(alignment), cap_(capacity), w_(w),
        max_nodes_(max_nodes) {
    canonical_ = !(disable & kNoCanonical);
    inference_ = !(disable & kNoSectionInference);
    dyn_order_ = !(disable & kNoDynamicOrdering);
    dominance_ = !(disable & kNoDominance);
    unalloc_floor_ = !(disable & kNoUnallocatedFloor);
    preorder_ = !(disable & kNoStaticPreorder);
    decompose_ = !(disable & kNoDecomposition);
    mono_floor_ = !(disable & kNoMonotonicFloor);
    hatless_ = !(disable & kNoHatless);
    off_.assign(n, -1);
    minoff_.assign(n, 0);
    sol_.assign(n, 0);
    pidx_.assign(n, 0);
    floor_.assign(w.sections, 0);
    total_ = w.sec_total;
    cuts_.assign(w.sections > 0 ? w.sections - 1 : 0, 0);
    for (int b = 0; b < n; ++b)
      for (int s = w.s0[b]; s + 1 < w.s1[b]; ++s) ++cuts_[s];
    start_ = Clock::now();
    deadline_ = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                             time_limit > 1e9 ? 1e9 : (time_limit < 0 ? 0 : time_limit)));
  }

  // Solves every partition, trying the heuristics round robin (doubling node limits).
  int run(const std::vector<std::string>& heuristics) {
    if (n_ == 0) return kFound;
    for (int s = 0; s < w_.sections; ++s)
      if (w_.sec_total[s] > cap_) return kInfeasible;       // the cross-section bound says no
    for (int b = 0; b < n_; ++b)
      if (size_[b] > cap_) return kInfeasible;
    std::vector<char> solved(w_.parts.size(), 0);
    if (heuristics.size() == 1) {
      for (const Part& p : w_.parts) {
        nodes_left_ = kInf;
        const int st = subsolve(p, heuristics[0]);
        if (st != kFound) return st;
      }
      return kFound;
    }
    i64 limit = n_;
    while (true) {
      limit = limit > kInf / 4 ? kInf / 2 : 2 * limit;
      bool all = true;
      for (size_t k = 0; k < w_.parts.size(); ++k) {
        if (solved[k]) continue;
        int st = kAborted;
        for (const std::string& h : heuristics) {
          nodes_left_ = limit;
          st = subsolve(w_.parts[k], h);
          if (st != kAborted) break;
        }
        if (st == kFound) {
          solved[k] = 1;
        } else if (st == kAborted) {
          all = false;
        } else {
          return st;
        }
      }
      if (all) return kFound;
    }
  }

  const std::vector<i64>& solution() const { return sol_; }
  i64 backtracks() const { return backtracks_; }
  i64 nodes() const { return nodes_; }

 private:
  using Clock = std::chrono::steady_clock;

  bool less(const Pre& a, const Pre& b, const std::string& h) const {
    for (char c : h) {
      switch (c) {
        case 'A': if (a.area != b.area) return a.area > b.area; break;
        case 'C': if (a.sections != b.sections) return a.sections > b.sections; break;
        case 'L': if (a.lower != b.lower) return a.lower > b.lower; break;
        case 'O': if (a.overlaps != b.overlaps) return a.overlaps > b.overlaps; break;
        case 'T': if (a.total != b.total) return a.total > b.total; break;
        case 'U': if (a.upper != b.upper) return a.upper > b.upper; break;
        case 'W': if (a.width != b.width) return a.width > b.width; break;
        case 'Z': if (a.size != b.size) return a.size > b.size; break;
        default: break;
      }
    }
    return a.buf < b.buf;
  }

  // Ranks the (unplaced) buffers of a partition by the heuristic, then searches it.
  int subsolve(const Part& p, const std::string& h) {
    std::vector<Pre> pre;
    pre.reserve(p.bufs.size());
    for (int b : p.bufs) {
      i64 total = 0;
      for (int s = w_.s0[b]; s < w_.s1[b]; ++s) total = std::max(total, total_[s]);
      const i64 width = upper_[b] - lower_[b];
      pre.push_back({(__int128)size_[b] * width, width, total, size_[b], lower_[b], upper_[b],
                     (i64)(w_.s1[b] - w_.s0[b]), (i64)(w_.adj_ptr[b + 1] - w_.adj_ptr[b]), b});
    }
    if (preorder_)
      std::sort(pre.begin(), pre.end(), [&](const Pre& a, const Pre& b) { return less(a, b, h); });
    std::vector<int> saved(pre.size());
    for (size_t k = 0; k < pre.size(); ++k) {
      saved[k] = pidx_[pre[k].buf];
      pidx_[pre[k].buf] = (int)k;
    }
    const int st = search(p, h, 0, 0);
    for (size_t k = 0; k < pre.size(); ++k) pidx_[pre[k].buf] = saved[k];
    return st;
  }

  bool timed_out() {
    if (timed_out_) return true;
    if (Clock::now() > deadline_) timed_out_ = true;
    return timed_out_;
  }

  int search(const Part& p, const std::string& h, i64 min_offset, int min_pidx) {
    if (nodes_left_ <= 0) return kAborted;
    --nodes_left_;
    ++nodes_;
    if (max_nodes_ > 0 && nodes_ > max_nodes_) return kNodeLimit;
    if ((nodes_ & 63) == 0 && timed_out()) return kTimeout;
    i64 min_height = kInf;
    bool any = false;
    for (int b : p.bufs) {
      if (off_[b] >= 0) continue;
      any = true;
      min_height = std::min(min_height, minoff_[b] + size_[b]);
    }
    if (!any) return kFound;  // a leaf: every buffer of the partition is placed
    const size_t base = arena_.size();
    for (int b : p.bufs) {
      if (off_[b] >= 0) continue;
      const i64 o = minoff_[b];
      if (dominance_ && o >= min_height) continue;
      if (canonical_ && (o < min_offset || (o == min_offset && pidx_[b] < min_pidx))) continue;
      arena_.push_back({o, pidx_[b], b});
    }
    const size_t count = arena_.size() - base;
    if (dyn_order_) {
      std::sort(arena_.begin() + base, arena_.end(), [](const Entry& a, const Entry& b) {
        return a.off != b.off ? a.off < b.off : a.pidx < b.pidx;
      });
    } else {
      std::sort(arena_.begin() + base, arena_.end(),
                [](const Entry& a, const Entry& b) { return a.pidx < b.pidx; });
    }
    for (size_t k = 0; k < count; ++k) {
      const Entry e = arena_[base + k];
      bool hatless = false;
      const int st = place(p, h, e, hatless);
      if (st != kInfeasible) {
        arena_.resize(base);
        return st;
      }
      if (hatless && hatless_) break;
    }
    arena_.resize(base);
    ++backtracks_;
    return kInfeasible;
  }

  i64 align_up(i64 v) const { return align_ <= 1 ? v : ((v + align_ - 1) / align_) * align_; }

  // Places e.buf at e.off, propagates, checks the sections, recurses, and undoes it all.
  int place(const Part& p, const std::string& h, const Entry& e, bool& hatless) {
    const int b = e.buf;
    const i64 o = e.off;
    const i64 top = o + size_[b];
    off_[b] = o;
    sol_[b] = o;
    const size_t off_mark = off_undo_.size();
    const size_t floor_mark = floor_undo_.size();
    hatless = true;
    int alo = INT_MAX, ahi = INT_MIN;
    for (int k = w_.adj_ptr[b]; k < w_.adj_ptr[b + 1]; ++k) {
      const int j = w_.adj[k];
      if (off_[j] >= 0) continue;
      hatless = false;
      if (minoff_[j] >= top) continue;
      off_undo_.push_back({j, minoff_[j]});
      minoff_[j] = align_up(top);
      if (unalloc_floor_) {
        alo = std::min(alo, w_.s0[j]);
        ahi = std::max(ahi, w_.s1[j]);
      }
    }
    const int b0 = w_.s0[b], b1 = w_.s1[b];
    for (int s = b0; s < b1; ++s) {
      floor_undo_.push_back({s, floor_[s]});
      floor_[s] = std::max(floor_[s], top);
      total_[s] -= size_[b];
    }
    // Unallocated floor: no unplaced buffer of a section goes below its minimum offset, so the bytes
    // left there must fit above the lowest of those. The lowest only rises where a minimum offset was
    // just raised (sections [alo, ahi)), and what it proves does not fade deeper down (the bytes left
    // only shrink), so it is tested here, where it changes, and need not be stored: a section passes
    // as soon as one unplaced buffer starts low enough, usually after a few members.
    bool ok = true;
    for (int s = alo; s < ahi && ok; ++s) {
      if (total_[s] == 0) continue;
      const i64 room = inference_ ? cap_ - total_[s] : cap_;  // the highest offset they can start at
      ok = false;
      for (int k = w_.sec_ptr[s]; k < w_.sec_ptr[s + 1]; ++k) {
        const int j = w_.sec_bufs[k];
        if (off_[j] < 0 && minoff_[j] <= room) {
          ok = true;
          break;
        }
      }
    }
    for (int s = p.lo; s < p.hi && ok; ++s) {
      i64 f = floor_[s];
      if (mono_floor_ && f < o) f = o;
      if (inference_) f += total_[s];
      if (f > cap_) ok = false;
    }
    int st = kInfeasible;
    if (ok) st = decompose_ ? decompose(p, h, e) : search(p, h, o, e.pidx);
    for (size_t k = floor_undo_.size(); k-- > floor_mark;) floor_[floor_undo_[k].first] = floor_undo_[k].second;
    floor_undo_.resize(floor_mark);
    for (int s = b0; s < b1; ++s) total_[s] += size_[b];
    for (size_t k = off_undo_.size(); k-- > off_mark;) minoff_[off_undo_[k].first] = off_undo_[k].second;
    off_undo_.resize(off_mark);
    off_[b] = -1;
    return st;
  }

  // After placing e.buf: where no unplaced buffer crosses between two sections any more, the two
  // sides are independent sub-problems, each solved on its own (with its own preorder).
  int decompose(const Part& p, const std::string& h, const Entry& e) {
    const int b = e.buf;
    std::vector<int> cut_at;
    for (int s = w_.s0[b]; s + 1 < w_.s1[b]; ++s)
      if (--cuts_[s] == 0) cut_at.push_back(s + 1);
    int st = kFound;
    if (cut_at.empty()) {
      st = search(p, h, e.off, e.pidx);
    } else {
      std::vector<int> bounds;
      bounds.push_back(p.lo);
      bounds.insert(bounds.end(), cut_at.begin(), cut_at.end());
      bounds.push_back(p.hi);
      for (size_t c = 1; c < bounds.size() && st == kFound; ++c) {
        Part sub;
        sub.lo = bounds[c - 1];
        sub.hi = bounds[c];
        for (int j : p.bufs)
          if (off_[j] < 0 && w_.s0[j] < sub.hi && sub.lo < w_.s1[j]) sub.bufs.push_back(j);
        if (sub.bufs.empty()) continue;
        st = subsolve(sub, h);
      }
    }
    for (int s = w_.s0[b]; s + 1 < w_.s1[b]; ++s) ++cuts_[s];
    return st;
  }

  const int n_;
  const i64 *lower_, *upper_, *size_;
  const i64 align_, cap_;
  const Sweep& w_;
  const i64 max_nodes_;
  bool canonical_, inference_, dyn_order_, dominance_, unalloc_floor_, preorder_, decompose_,
      mono_floor_, hatless_;
  std::vector<i64> off_, minoff_, sol_, floor_, total_;
  std::vector<int> pidx_, cuts_;
  std::vector<Entry> arena_;
  std::vector<std::pair<int, i64>> off_undo_, floor_undo_;
  i64 nodes_left_ = kInf, nodes_ = 0, backtracks_ = 0;
  bool timed_out_ = false;
  Clock::time_point start_, deadline_;
};

struct Job {
  int64_t n;
  const int64_t *lower, *upper, *size;
  int64_t alignment, capacity;
  double time_limit;
  int64_t max_nodes;
  const char* heuristics;
  uint32_t disable;
  int64_t* offsets;
  int64_t* stats;
  int result;
};

std::vector<std::string> split(const char* text) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* c = text; c && *c; ++c) {
    if (*c == ',' || *c == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(*c);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  if (out.empty()) out = {"WAT", "TAW", "TWA"};
  return out;
}

void run_job(Job& job) {
  const int n = (int)job.n;
  // zero-size buffers take no bytes: offset 0, out of the search
  std::vector<int> keep;
  for (int b = 0; b < n; ++b) {
    job.offsets[b] = 0;
    if (job.size[b] > 0) keep.push_back(b);
  }
  const int m = (int)keep.size();
  std::vector<i64> lo(m), hi(m), sz(m);
  for (int k = 0; k < m; ++k) {
    lo[k] = job.lower[keep[k]];
    hi[k] = job.upper[keep[k]];
    sz[k] = job.size[keep[k]];
  }
  const Sweep w = sweep(m, lo.data(), hi.data(), sz.data());
  Search search(m, lo.data(), hi.data(), sz.data(), job.alignment, job.capacity, w, job.disable,
                job.time_limit, job.max_nodes);
  const int st = search.run(split(job.heuristics));
  if (st == kFound)
    for (int k = 0; k < m; ++k) job.offsets[keep[k]] = search.solution()[k];
  if (job.stats) {
    job.stats[0] = search.backtracks();
    job.stats[1] = search.nodes();
  }
  job.result = st == kAborted ? kNodeLimit : st;
}

void* thread_main(void* arg) {
  Job& job = *static_cast<Job*>(arg);
  try {
    run_job(job);
  } catch (...) {  // out of memory: report it, never let it end the process
    job.result = -2;
  }
  return nullptr;
}

}  // namespace

extern "C" {

// The version of this interface; the Python loader refuses a library with another one.
int memplan_mm_abi_version(void) { return 1; }

// Decide whether the n buffers fit within `capacity`.
//
// Buffer b lives in [lower[b], upper[b]) (upper > lower) and takes size[b] >= 0 bytes; offsets are
// multiples of `alignment` (>= 1). Values must keep sum(size) + n * alignment below 2**62.
// `heuristics`: comma-separated static preorders ("WAT,TAW,TWA" if null or empty), tried round
// robin; `disable`: a bit mask of search features to turn off (0 = MiniMalloc's defaults);
// `max_nodes` <= 0: no node limit.
//
// Returns 0 = found (offsets written), 1 = infeasible (proven), 2 = timeout, 3 = node limit,
// -1 = bad arguments, -2 = out of memory or another failure. stats (may be null) receives
// [backtracks, nodes].
int memplan_mm_solve(int64_t n, const int64_t* lower, const int64_t* upper, const int64_t* size,
                     int64_t alignment, int64_t capacity, double time_limit, int64_t max_nodes,
                     const char* heuristics, uint32_t disable, int64_t* offsets, int64_t* stats) {
  if (n < 0 || n > INT_MAX / 4 || alignment < 1 || capacity < 0 || (n > 0 && (!lower || !upper || !size || !offsets)))
    return -1;
  for (int64_t b = 0; b < n; ++b)
    if (upper[b] <= lower[b] || size[b] < 0) return -1;
  Job job{n, lower, upper, size, alignment, capacity, time_limit, max_nodes, heuristics, disable, offsets, stats, -2};
  // the search recurses once or twice per placed buffer: run it on a thread with room for that
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return -2;
  const size_t stack = (size_t)(16u << 20) + (size_t)n * 4096u;
  pthread_attr_setstacksize(&attr, stack);
  pthread_t thread;
  if (pthread_create(&thread, &attr, thread_main, &job) != 0) {
    pthread_attr_destroy(&attr);
    try {
      run_job(job);
    } catch (...) {
      return -2;
    }
    return job.result;
  }
  pthread_attr_destroy(&attr);
  pthread_join(thread, nullptr);
  return job.result;
}

}  // extern "C"
