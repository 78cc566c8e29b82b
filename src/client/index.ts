/**
 * client — the DogFS client library: discovers metadata leaders from a seed list, follows NOT_LEADER
 * hints, and streams erasure-coded shards directly to and from chunk servers. Owns: the write and read
 * paths on the client side. May import: codec, wire, common. (Arrives with issue 6.)
 */
export {};
