//! `nsrun pull | images | inspect | rmi | gc` (being written).
