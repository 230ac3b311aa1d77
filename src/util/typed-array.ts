// Growing typed arrays that hold a list (a length kept beside them).

/** A copy of `array` twice as long, its first half the same values: for a full list that must grow. */
export function doubled(array: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> {
  const bigger = new Float64Array(array.length * 2);
  bigger.set(array);
  return bigger;
}
