/**
 * A refusal to send to the client: an NBD error value and a sentence. Deliberately not an Error:
 * refusing a request is an ordinary answer, and capturing a stack trace for each one cost more
 * than serving the request (measured by the fuzzer).
 */
export class RequestError {
  readonly nbdError: number;
  readonly message: string;
  constructor(nbdError: number, message: string) {
    this.nbdError = nbdError;
    this.message = message;
  }
}
