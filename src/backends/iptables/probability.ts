const probabilities: string[] = [];

/**
 * `1/n` as upstream prints it for `-m statistic --probability` (Go's `%0.10f`: correctly rounded,
 * ties to even), remembered because the same few values are printed for every service.
 */
export function probability(n: number): string {
  let p = probabilities[n];
  if (p === undefined) {
    p = formatProbability(n);
    probabilities[n] = p;
  }
  return p;
}

function formatProbability(n: number): string {
  const fixed = (1 / n).toFixed(10);
  // toFixed breaks exact ties upwards; 1/n is an exact decimal tie at 10 places only for powers of two.
  if ((n & (n - 1)) !== 0) return fixed;
  const k = Math.log2(n);
  if (k <= 10) return fixed;
  const digits = (5n ** BigInt(k)).toString().padStart(k, "0"); // 1/2^k = 5^k / 10^k
  const kept = BigInt(digits.slice(0, 10));
  const rest = digits.slice(10);
  const half = "5".padEnd(rest.length, "0");
  const roundUp = rest > half || (rest === half && kept % 2n === 1n);
  return `0.${(roundUp ? kept + 1n : kept).toString().padStart(10, "0")}`;
}
