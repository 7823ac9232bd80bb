import { useCallback, useEffect, useRef, useState } from "preact/hooks";

// Runs `load` now and again `every(data)` ms after each answer (never two at once), until the
// component unmounts or `deps` change. Keeps the last good data when a poll fails, so a
// transient error shows beside the page instead of blanking it. `every` returning 0 stops.
export function usePoll(load, every, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const timer = useRef(null);
  const loadRef = useRef(load);
  const everyRef = useRef(every);
  loadRef.current = load;
  everyRef.current = every;

  const run = useCallback(async (mine) => {
    clearTimeout(timer.current);
    let data = null;
    let error = null;
    try {
      data = await loadRef.current();
    } catch (err) {
      error = err;
    }
    if (mine !== generation.current) return;
    setState((prev) => ({ data: error ? prev.data : data, error, loading: false }));
    const delay = typeof everyRef.current === "function" ? everyRef.current(data, error) : everyRef.current;
    if (delay > 0) timer.current = setTimeout(() => run(mine), delay);
  }, []);

  useEffect(() => {
    const mine = ++generation.current;
    setState({ data: null, error: null, loading: true });
    run(mine);
    return () => {
      generation.current++;
      clearTimeout(timer.current);
    };
  }, deps);

  const refresh = useCallback(() => run(generation.current), [run]);
  return { ...state, refresh };
}
