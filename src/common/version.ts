/** The DogFS version, kept equal to package.json's by a test. */
export const DOGFS_VERSION = '0.1.0';
