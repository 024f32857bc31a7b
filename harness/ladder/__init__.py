"""From packets to the ladder: decoding, TCP reassembly, dissection, comparison."""
