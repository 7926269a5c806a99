"""The DendroMap's cluster tree (tree) and what builds it: exact and weighted Ward (ward), k-means (kmeans)."""
