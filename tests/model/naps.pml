/*
 * naps.pml - a Promela model of csrc/fq_wait.c's sleeper/writer protocol with
 * the per-slot nap mark ("Waking each sleep once").  Checked with spin:
 *
 *   spin -a naps.pml && gcc -O2 -DBITSTATE -o pan pan.c && ./pan -w33   (expect: errors: 0;
 *       an exhaustive -DCOLLAPSE search needs more than 6 GB: tests/model/README.md)
 *   spin -DMUTANT=1 -a naps.pml && ...                         (expect: errors: 1)
 *   spin -DKILL ...: B may be SIGKILLed, recovered, its slot reused by C
 *
 * Property (Check): when nothing can move any more, no live sleeper is blocked
 * in FUTEX_WAIT while a message is left (a lost wake-up).  Sleepers are
 * consumers: each takes one message and leaves, so a woken thread may find
 * the message gone and sleep again (the re-sleep the stale-CAS cases need).
 *
 * Actors: slot 0 is one handle (process A) with two sleeper threads A1, A2 and
 * their mutex; slot 1 is process B's handle with one sleeper, which may be
 * SIGKILLed at any step; after its death a recoverer clears slot 1's bit, bumps
 * the word and wakes (fq_recover), then a new owner C takes slot 1 (fresh
 * mutex and count, the dead owner's nap left as it was) and sleeps on it.
 * Two writers publish one message each; W1 may be SIGKILLed at any step after
 * its publish, and then a third writer comes (the protocol promises that the
 * next writer wakes, not that a killed writer's message wakes anyone alone).  Every sleeper may time out of FUTEX_WAIT once (a slice, or a
 * spurious return) and must then sleep for good.
 *
 * Memory model: Promela interleaves, i.e. sequential consistency, which is
 * what the seq_cst fence / loads / RMWs of fq_wait.c give for these accesses
 * (docs/review-naps.md has the C11 argument).  The writer loads one 64-bit
 * mask word (both slots' bits at once), then each slot's nap, as fq_wake does.
 * Bells (fq_arm) are not modelled: bell_sides is taken as FUTEX for every slot
 * with its bit up, so the nap always decides.
 *
 * The nap (default) is what csrc/fq_wait.c does since 86ba533: a per-slot
 * count of registrations << 1 | WOKEN; a sleeper, under its mutex, loads v,
 * then loads the nap n and stores (n & ~WOKEN) + 2 (NEXTNAP below).  Never reset: C,
 * the new owner of slot 1, counts on from B's registrations.
 *
 * MUTANT (spin -DMUTANT=n):
 *   1  the writer CASes a nap it reloads after its FUTEX_WAKE (not the one it
 *      loaded before its bump)
 *   2  the sleeper stores its registration first and loads the v it waits on
 *      after unlocking (v after the bit)
 *   3  the writer ORs WOKEN in place of its CAS (the mutant the commit's
 *      test_wake_naps.py checks by hand)
 *   4  the old nap (before 86ba533): SLEEPING(v) = v*2, with the 32-bit word
 *      coming round in 2 bumps (v modulo 2; the futex word itself does not
 *      wrap here): D1 of docs/review-naps.md, caught with -DKILL -DTMO=0
 *   5  the registration stored before v is loaded (both under the mutex):
 *      caught by a bitstate search (the exhaustive one runs out of memory first)
 *   6  the old nap SLEEPING(v) with the word coming round at every bump
 *      (v modulo 1): D1 under the most pressure, caught in the default
 *   7  the count restarts: the handle's last sleeper stores WOKEN alone
 *      (nap = 1) where it sets the bit, so registration values come again
 *   8  the old nap SLEEPING(v) as it was, without a wrap (expect: errors: 0;
 *      its defect needs 2^32 bumps, which mutants 4 and 6 stand for)
 */
#ifndef MUTANT
#define MUTANT 0
#endif

/* which threads (bit t) may time out of FUTEX_WAIT once: by default A2, a
 * thread sleeping in slices beside A1 asleep for good */
#ifndef TMO
#define TMO 2
#endif

#define NT 4            /* sleeper threads: A1 A2 (slot 0), B (slot 1), C (slot 1) */
#define NH 3            /* handles: A, B, C (C is the new owner of slot 1) */

byte seq = 0;           /* the side's futex word (never wraps here: few bumps) */
byte data = 0;          /* messages published */
bit  mask[2];           /* the side's mask bits of slots 0 and 1 */
byte nap[2];            /* registrations * 2 | WOKEN (bit 0); mutants 4, 6, 8: SLEEPING(v) = v*2 */
byte hn[8];             /* hn[w*2 + s]: the nap of slot s writer w loaded SLEEPING, until its CAS (0: none) */
bit  mu[NH];            /* each handle's mutex */
byte cnt[NH];           /* each handle's sleepers[side] */
bit  asleep[NT];        /* in FUTEX_WAIT */
bit  tmo[NT];           /* the one time-out a thread may take has been used */
bit  b_dead = 0;
bit  b_gone = 0;        /* B's process is dead: its futex sleep is gone */

#if MUTANT == 4
#define NAPV(v) (((v) % 2) * 2)
#elif MUTANT == 6
#define NAPV(v) 0
#else
#define NAPV(v) ((v) * 2)
#endif
#define OLDNAP (MUTANT == 4 || MUTANT == 6 || MUTANT == 8)
/* FQ_NAP_NEXT.  fq_wait_pred loads the nap, then stores this, two steps;
 * one step here, which loses no behaviour: the value stored does not depend
 * on bit 0, the only bit anyone else changes (a writer's CAS, under the
 * handle's mutex nobody else registers), so a CAS between the load and the
 * store ends in the state of the same CAS made just before the load, and a
 * writer's load between them reads what it would read just before. */
#define RAWNEXT(n) (((n) & 254) + 2)
/* The count itself makes every registration a value no writer holds; the
 * model picks, for the same effect with far fewer states, the smallest even
 * value >= 2 that is neither the slot's current registration nor held by a
 * writer between its load of the nap and its CAS (hn; at most 4 writers):
 * only equality with those values is ever tested (the CAS), so the
 * behaviours are the same as with a count that never repeats (data
 * independence).  MUTANT 7 (a count that restarts) uses the raw count. */
#define FREE(x, s) ((nap[s] & 254) != (x) && hn[s] != (x) && hn[2 + (s)] != (x) && \
                    hn[4 + (s)] != (x) && hn[6 + (s)] != (x))
#define NEXTNAP(s) (FREE(2, s) -> 2 : (FREE(4, s) -> 4 : (FREE(6, s) -> 6 : \
                    (FREE(8, s) -> 8 : 10))))

inline futex_wake() {
    atomic { asleep[0] = 0; asleep[1] = 0; asleep[2] = 0; asleep[3] = 0 }
}

/* fq_wake for one side: load the mask word, each slot's nap; if one is
 * SLEEPING, bump, wake, then CAS the naps seen.  killable: W1 may die
 * after its publish and at each step after its bump (goto dead). */
inline wake(killable, wid) {
    m0 = 0; m1 = 0; n0 = 0; n1 = 0; r0 = 0; r1 = 0;
    /* (a kill before the bump is a kill right after the publish: loads
     * leave nothing behind; see Writer) */
    atomic { m0 = mask[0]; m1 = mask[1] };
    if :: m0 -> atomic { n0 = nap[0]; r0 = ((n0 & 1) == 0); if :: r0 -> hn[wid * 2] = n0 :: else fi } :: else fi;
    if :: m1 -> atomic { n1 = nap[1]; r1 = ((n1 & 1) == 0); if :: r1 -> hn[wid * 2 + 1] = n1 :: else fi } :: else fi;
    if
    :: r0 || r1 ->
        seq++;
        if :: killable -> goto dead :: true fi;
        futex_wake();
        if :: killable -> goto dead :: true fi;
#if MUTANT == 1
        if :: r0 -> n0 = nap[0] :: else fi;
        if :: r1 -> n1 = nap[1] :: else fi;
#endif
#if MUTANT == 3
        if :: r0 -> nap[0] = nap[0] | 1 :: else fi;
        if :: killable -> goto dead :: true fi;
        if :: r1 -> nap[1] = nap[1] | 1 :: else fi
#else
        if :: r0 -> atomic { if :: nap[0] == n0 -> nap[0] = n0 | 1 :: else fi; hn[wid * 2] = 0 } :: else fi;
        if :: killable -> goto dead :: true fi;
        if :: r1 -> atomic { if :: nap[1] == n1 -> nap[1] = n1 | 1 :: else fi; hn[wid * 2 + 1] = 0 } :: else fi
#endif
    :: else
    fi
}

proctype Writer(bit killable; byte wid) {
    bit m0, m1, r0, r1;
    byte n0, n1;
    data++;             /* publish; the seq_cst fence is implicit (SC) */
    if :: killable -> goto dead :: true fi;
    wake(killable, wid);
    goto done;
dead:               /* killed: its message waits for the next writer's wake */
    atomic { hn[wid * 2] = 0; hn[wid * 2 + 1] = 0 };
    run Writer(0, 2);
done:
    skip
}

/* fq_wait_pred for the data side, looped by its caller until data is there.
 * Steps that touch only the handle's own state (its mutex, its count) are
 * merged with a neighbouring shared access: no other handle can see them. */
inline sleep_loop(t, h, s) {
    do
    :: atomic { data > 0 -> data-- }; break    /* take a message: done */
    :: else ->
        atomic { mu[h] == 0 -> mu[h] = 1; cnt[h]++ };
#if MUTANT == 2
        nap[s] = NEXTNAP(s);
#elif MUTANT == 5
        nap[s] = NEXTNAP(s);
        v = seq;
#elif MUTANT == 7
        v = seq;
        nap[s] = RAWNEXT(nap[s]);
#elif OLDNAP
        v = seq;
        nap[s] = NAPV(v);
#else
        v = seq;                        /* fq_wait_pred: v, then the nap */
        nap[s] = NEXTNAP(s);            /* FQ_NAP_NEXT(load(nap)): a new registration */
#endif
        atomic { mask[s] = 1; mu[h] = 0 };  /* the seq_cst RMW on the mask; unlock */
#if MUTANT == 2
        v = seq;
#endif
        if
        :: data > 0 -> skip             /* the re-check */
        :: else ->
            atomic { if :: seq == v -> asleep[t] = 1 :: else fi };   /* FUTEX_WAIT(v) */
end_sleep:  /* a valid end while no message is left: Check asserts that */
            if
            :: !asleep[t] -> skip       /* woken, or EAGAIN */
            :: asleep[t] && !tmo[t] && ((TMO >> t) & 1) -> atomic { asleep[t] = 0; tmo[t] = 1 }  /* timed out */
            fi
        fi;
        atomic { mu[h] == 0 -> mu[h] = 1; cnt[h]-- };
        if
#if MUTANT == 7
        :: cnt[h] == 0 -> nap[s] = 1; atomic { mask[s] = 0; mu[h] = 0 }
#else
        :: cnt[h] == 0 -> nap[s] = nap[s] | 1; atomic { mask[s] = 0; mu[h] = 0 }
#endif
        :: else -> mu[h] = 0
        fi
    od
}

proctype Sleeper(byte t; byte h; byte s) {
    byte v;
    sleep_loop(t, h, s)
}

/* process B: its only thread, which may be SIGKILLed at any step (-DKILL) */
proctype SleeperB() {
    byte v;
#ifdef KILL
    { sleep_loop(2, 1, 1) } unless { b_dead -> atomic { asleep[2] = 0; b_gone = 1 } }
#else
    sleep_loop(2, 1, 1)
#endif
}

proctype Killer() {
    if :: b_dead = 1 :: skip fi
}

/* fq_recover after B's death: clear its bit, bump, wake; then C owns slot 1 */
proctype Recoverer() {
    bit m0, m1, r0, r1;
    byte n0, n1;
end_wait:
    b_gone;                 /* (a valid end: B may live) */
    mask[1] = 0;
    seq++;
    wake(0, 3);
dead:
    run Sleeper(3, 2, 1)
}

/* when nothing can move any more: no sleeper asleep beside a message */
proctype Check() {
    timeout;
    assert(data == 0 || !(asleep[0] || asleep[1] || asleep[2] || asleep[3]))
}

init {
    atomic {
        run Check();
        run Sleeper(0, 0, 0);
        run Sleeper(1, 0, 0);
        run SleeperB();
#ifdef KILL
        run Killer();
        run Recoverer();
#endif
#ifdef WKILL
        run Writer(1, 0);
#else
        run Writer(0, 0);
#endif
        run Writer(0, 1)
    }
}
